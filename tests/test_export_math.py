"""Balancing on real MATH level-5 outputs raises the share of chosen responses from rare answer modes.

A seeded subset of problems goes into a store directly (no embeddings, so one prompt cluster);
pairs are drawn uniformly at random over all pairs, as arenas do, and three annotators vote by
correctness (correct beats incorrect, both correct tie, both incorrect both bad). Modes come from
the `answer_key` field.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict

import numpy as np
import pytest

from engine.export import export_dataset
from engine.store import Store, make_pair_id, text_hash, utc_now
from engine.workspace import ExportSettings
from shared_data import SHARED_DATA

MATH_OUTPUTS = SHARED_DATA / "math_l5_dev_outputs.jsonl.gz"
PROBLEMS = 60
PAIRS = 900


def read_math_subset(problems: int, seed: int) -> dict[str, list[dict]]:
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    with gzip.open(MATH_OUTPUTS, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            by_prompt[row["prompt_id"]].append(row)
    chosen = np.random.default_rng(seed).choice(sorted(by_prompt), size=problems, replace=False)
    return {prompt_id: by_prompt[prompt_id] for prompt_id in sorted(chosen.tolist())}


def oracle_outcome(correct_a: bool, correct_b: bool) -> str:
    """Correct beats incorrect; both correct is a tie; both incorrect is both bad."""
    if correct_a == correct_b:
        return "tie" if correct_a else "both_bad"
    return "a" if correct_a else "b"


def build_store(store: Store, subset: dict[str, list[dict]], n_pairs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with store.transaction() as db:
        db.execute(
            "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
            "VALUES ('random', ?, ?, 0, 0, '{}', ?)",
            (n_pairs, seed, utc_now()),
        )
        candidates, correct = [], {}
        for prompt_id, rows in subset.items():
            prompt_row = db.execute(
                "INSERT INTO prompts (prompt_id, text, text_hash) VALUES (?, ?, ?)",
                (prompt_id, rows[0]["prompt"], text_hash(rows[0]["prompt"])),
            ).lastrowid
            stored = []
            seen = set()
            for row in rows:
                if not row["response"].strip() or text_hash(row["response"]) in seen:  # as ingest does
                    continue
                seen.add(text_hash(row["response"]))
                metadata = {key: row[key] for key in ("answer_key", "correct")}
                response_row = db.execute(
                    "INSERT INTO responses (response_id, prompt_row, model, text, text_hash, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                    (row["response_id"], prompt_row, row["model"], row["response"], text_hash(row["response"]), json.dumps(metadata)),
                ).lastrowid
                stored.append((response_row, row["response_id"]))
                correct[response_row] = row["correct"]
            candidates += [(prompt_row, stored[i], stored[j]) for i in range(len(stored)) for j in range(i + 1, len(stored))]

        for rank, index in enumerate(rng.choice(len(candidates), size=n_pairs, replace=False).tolist()):
            prompt_row, (row_a, id_a), (row_b, id_b) = candidates[index]
            pair_id, left_side = make_pair_id(id_a, id_b), str(rng.choice(["a", "b"]))
            db.execute(
                "INSERT INTO pairs (pair_id, prompt_row, response_a, response_b, round_id, rank, left_side, propensity) "
                "VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                (pair_id, prompt_row, row_a, row_b, rank, left_side, 1.0 / (len(candidates) - rank)),
            )
            outcome = oracle_outcome(correct[row_a], correct[row_b])
            for annotator in range(3):
                db.execute(
                    "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id) VALUES (?, ?, ?, ?, 'test', ?)",
                    (pair_id, f"oracle-{annotator}", outcome, left_side, f"{pair_id}/{annotator}"),
                )


@pytest.fixture(scope="module")
def math_sheet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not MATH_OUTPUTS.exists():
        pytest.skip(f"{MATH_OUTPUTS} not found")
    root = tmp_path_factory.mktemp("math")
    with Store(root / "store.sqlite3") as store:
        build_store(store, read_math_subset(PROBLEMS, seed=0), PAIRS, seed=0)
        return export_dataset(store, root / "out", ExportSettings()).datasheet


def test_math_rare_share_reported(math_sheet):
    before = math_sheet["balance"]["before"]
    assert before["rows_with_known_mode"] == before["rows"]


def test_math_caps_raise_rare_share(math_sheet):
    balance = math_sheet["balance"]
    assert balance["after_rows"]["rare_mode_share"] > balance["before"]["rare_mode_share"]


def test_math_weights_raise_rare_share(math_sheet):
    balance = math_sheet["balance"]
    assert balance["after_weighted"]["rare_mode_share"] > balance["before"]["rare_mode_share"]


def test_math_oracle_agreement(math_sheet):
    assert math_sheet["agreement"]["krippendorff_alpha_nominal"] == 1.0
