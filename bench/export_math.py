"""Export balancing on MATH level 5: share of chosen responses from rare answer modes, before and after.

The whole path runs on a seeded subset of problems: ingest (real all-MiniLM-L6-v2 embeddings of
prompts and responses, first 256 tokens), a `random` round (uniform over all pairs, as arenas do),
a `stochastic` round (recorded propensities), three annotators voting by correctness (correct
beats incorrect, both correct tie, both incorrect both bad), then `export_dataset` with the
default options. Response modes come from `answer_key`, prompt clusters from k-means over the
prompt embeddings. The workspace is kept in bench/.cache/ so later runs skip the embedding.

    .venv/bin/python bench/export_math.py --problems 30 --random-budget 400 --stochastic-budget 150
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.export import export_dataset  # noqa: E402
from engine.ingest import ingest_file  # noqa: E402
from engine.rounds import run_round  # noqa: E402
from engine.store import Store, utc_now  # noqa: E402
from engine.workspace import Config, ExportSettings, Workspace  # noqa: E402

MATH_OUTPUTS = REPO.parent / "shared" / "data" / "math_l5_dev_outputs.jsonl.gz"
CACHE = REPO / "bench" / ".cache"


def write_subset(path: Path, problems: int, seed: int) -> None:
    by_prompt: dict[str, list[str]] = defaultdict(list)
    with gzip.open(MATH_OUTPUTS, "rt", encoding="utf-8") as handle:
        for line in handle:
            by_prompt[json.loads(line)["prompt_id"]].append(line)
    chosen = sorted(np.random.default_rng(seed).choice(sorted(by_prompt), size=problems, replace=False).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line for prompt_id in chosen for line in by_prompt[prompt_id]), encoding="utf-8")


def oracle_outcome(correct_a: bool, correct_b: bool) -> str:
    if correct_a == correct_b:
        return "tie" if correct_a else "both_bad"
    return "a" if correct_a else "b"


def vote_by_correctness(store: Store, annotators: int) -> int:
    """Store `annotators` oracle votes on every pair that has none yet; return the pairs voted."""
    correct = {response.row: bool(response.metadata.get("correct")) for response in store.responses()}
    voted = {row["pair_id"] for row in store.execute("SELECT DISTINCT pair_id FROM votes")}
    pairs = [pair for pair_id, pair in sorted(store.pairs().items()) if pair_id not in voted]
    with store.transaction() as db:
        for pair in pairs:
            outcome = oracle_outcome(correct[pair.response_a], correct[pair.response_b])
            for annotator in range(annotators):
                db.execute(
                    "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id, created_at) "
                    "VALUES (?, ?, ?, ?, 'bench-oracle', ?, ?)",
                    (pair.pair_id, f"oracle-{annotator}", outcome, pair.left_side, f"{pair.pair_id}/{annotator}", utc_now()),
                )
    return len(pairs)


def build_workspace(root: Path, args: argparse.Namespace) -> None:
    workspace = Workspace(root)
    if workspace.exists():
        return
    subset = root.parent / f"{root.name}.jsonl"
    write_subset(subset, args.problems, args.seed)
    workspace.create()
    config = Config()
    config.embedding.truncate = True
    workspace.save_config(config)
    started = time.perf_counter()
    with Store(workspace.store_path) as store:
        report = ingest_file(workspace, store, subset)
        print(f"ingest: {report.responses_added} responses, {report.texts_embedded} texts embedded in {time.perf_counter() - started:.0f} s")
        run_round(workspace, store, budget=args.random_budget, strategy="random", seed=args.seed)
        vote_by_correctness(store, args.annotators)
        run_round(workspace, store, budget=args.stochastic_budget, strategy="stochastic", seed=args.seed + 1)
        vote_by_correctness(store, args.annotators)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--random-budget", type=int, default=400)
    parser.add_argument("--stochastic-budget", type=int, default=150)
    parser.add_argument("--annotators", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = CACHE / f"export-math-{args.problems}-{args.random_budget}-{args.stochastic_budget}-{args.seed}"
    build_workspace(root, args)
    with Store(Workspace(root).store_path) as store:
        started = time.perf_counter()
        sheet = export_dataset(store, root / "export", ExportSettings()).datasheet
        elapsed = time.perf_counter() - started

    balance = sheet["balance"]
    print(f"export in {elapsed:.1f} s to {root / 'export'}; strata: {json.dumps(balance['strata'])}")
    print(f"excluded pairs: {sheet['counts']['excluded_pairs']}; weights {sheet['weights']}")
    print("| | before | after caps | after caps and weights |")
    print("|---|---|---|---|")
    for key in ("rows", "rare_mode_share", "chosen_longer_rate", "chosen_shown_left_rate"):
        print(f"| {key} | " + " | ".join(str(balance[name][key]) for name in ("before", "after_rows", "after_weighted")) + " |")


if __name__ == "__main__":
    main()
