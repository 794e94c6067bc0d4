"""Export: vote aggregation, the per-prompt cap, the split by prompt, files and datasheet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.export import aggregate_votes, export_dataset
from engine.store import Store, make_pair_id, utc_now
from engine.workspace import ExportSettings


@pytest.mark.parametrize(
    ("votes", "outcome", "agreement", "reason"),
    [
        (["a", "a", "b"], "a", 2 / 3, None),
        (["b", "skip", "skip"], "b", 1.0, None),
        (["a", "b"], None, 0.5, "no_majority"),
        (["tie", "tie", "a"], "tie", 2 / 3, None),
        (["both_bad"], "both_bad", 1.0, None),
        (["skip", "skip"], None, 0.0, "too_few_votes"),
        ([], None, 0.0, "too_few_votes"),
    ],
)
def test_aggregate_votes_table(votes, outcome, agreement, reason):
    result = aggregate_votes(votes)
    assert result.outcome == outcome
    assert result.agreement == pytest.approx(agreement)
    assert result.reason == reason


def test_aggregate_min_votes():
    assert aggregate_votes(["a"], min_votes=2).reason == "too_few_votes"


def test_aggregate_min_agreement():
    assert aggregate_votes(["a", "a", "b"], min_agreement=0.9).reason == "low_agreement"


PROMPT_TEXT = "Quelle est la capitale ? 🇫🇷 <b>gras</b>"


def populate(store: Store, prompts: int = 10, responses_per_prompt: int = 4) -> list[str]:
    """Insert prompts, responses, pairs of every prompt and three votes per pair; return pair ids."""
    pair_ids = []
    with store.transaction() as db:
        db.execute(
            "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
            "VALUES ('hybrid', 10, 0, 10, 0, '{}', ?)",
            (utc_now(),),
        )
        for p in range(prompts):
            db.execute(
                "INSERT INTO prompts (prompt_id, text, text_hash) VALUES (?, ?, ?)",
                (f"p{p}", f"{PROMPT_TEXT} {p}", f"h{p}"),
            )
            prompt_row = db.execute("SELECT id FROM prompts WHERE prompt_id = ?", (f"p{p}",)).fetchone()[0]
            rows = []
            for r in range(responses_per_prompt):
                cursor = db.execute(
                    "INSERT INTO responses (response_id, prompt_row, model, text, text_hash, metadata) "
                    "VALUES (?, ?, ?, ?, ?, '{}')",
                    (f"p{p}-r{r}", prompt_row, f"model-{r}", f"Réponse {r} e\u0301 🎉 <script>x</script>", f"h{p}-{r}"),
                )
                rows.append((cursor.lastrowid, f"p{p}-r{r}"))
            for i in range(len(rows)):
                for j in range(i + 1, len(rows)):
                    pair_id = make_pair_id(rows[i][1], rows[j][1])
                    db.execute(
                        "INSERT INTO pairs (pair_id, prompt_row, response_a, response_b, round_id, rank, left_side) "
                        "VALUES (?, ?, ?, ?, 1, 0, ?)",
                        (pair_id, prompt_row, rows[i][0], rows[j][0], "a" if (i + j) % 2 else "b"),
                    )
                    # response with the lower index wins 2-1, except pairs with response 3: tie
                    votes = ["tie", "tie", "a"] if j == 3 and i == 2 else ["a", "a", "b"]
                    for k, outcome in enumerate(votes):
                        db.execute(
                            "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id) "
                            "VALUES (?, ?, ?, 'a', 'test', ?)",
                            (pair_id, f"annotator-{k}", outcome, f"{pair_id}/{k}"),
                        )
                    pair_ids.append(pair_id)
    return pair_ids


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store.sqlite3") as store:
        yield store


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_rows_and_split(store, tmp_path):
    populate(store)
    summary = export_dataset(store, tmp_path / "out", ExportSettings(max_pairs_per_prompt=10, test_fraction=0.2))
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    test = read_jsonl(tmp_path / "out" / "test.jsonl")
    assert len(train) + len(test) == 10 * 5  # 6 pairs per prompt, one of them a tie
    assert {row["prompt_id"] for row in train}.isdisjoint({row["prompt_id"] for row in test})
    assert len({row["prompt_id"] for row in test}) == 2
    assert all(row["chosen"] != row["rejected"] for row in train + test)
    assert summary.datasheet["counts"]["excluded_pairs"] == {"tie": 10}


def test_export_columns_and_winner(store, tmp_path):
    populate(store, prompts=1)
    export_dataset(store, tmp_path / "out", ExportSettings(max_pairs_per_prompt=10, test_fraction=0))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert list(rows[0]) == [
        "prompt", "chosen", "rejected", "prompt_id", "chosen_id", "rejected_id", "chosen_model",
        "rejected_model", "n_votes", "agreement", "round", "pair_id", "chosen_shown_left",
        "weight", "prompt_cluster", "chosen_mode", "rejected_mode", "chosen_rare_mode", "propensity",
    ]
    first = next(row for row in rows if {row["chosen_id"], row["rejected_id"]} == {"p0-r0", "p0-r1"})
    assert first["chosen_id"] == "p0-r0"
    assert first["n_votes"] == 3
    assert first["agreement"] == pytest.approx(2 / 3)


def test_export_unicode_byte_for_byte(store, tmp_path):
    populate(store, prompts=1)
    export_dataset(store, tmp_path / "out", ExportSettings(test_fraction=0))
    row = read_jsonl(tmp_path / "out" / "train.jsonl")[0]
    assert row["prompt"].encode() == f"{PROMPT_TEXT} 0".encode()
    assert "e\u0301 🎉 <script>x</script>" in row["chosen"]


def test_export_cap_per_prompt(store, tmp_path):
    populate(store, prompts=3)
    summary = export_dataset(store, tmp_path / "out", ExportSettings(max_pairs_per_prompt=2, test_fraction=0))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(rows) == 6
    assert summary.datasheet["counts"]["excluded_pairs"]["per_prompt_cap"] == 9


def test_export_parquet_matches_jsonl(store, tmp_path):
    populate(store, prompts=4)
    export_dataset(store, tmp_path / "out", ExportSettings(test_fraction=0.25))
    for split in ("train", "test"):
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet").to_pylist()
        assert table == read_jsonl(tmp_path / "out" / f"{split}.jsonl")


def test_export_deterministic(store, tmp_path):
    populate(store, prompts=5)
    export_dataset(store, tmp_path / "one", ExportSettings())
    export_dataset(store, tmp_path / "two", ExportSettings())
    for name in ("train.jsonl", "test.jsonl", "train.parquet", "datasheet.json", "datasheet.md"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_datasheet_position_and_models(store, tmp_path):
    populate(store, prompts=2)
    summary = export_dataset(store, tmp_path / "out", ExportSettings(max_pairs_per_prompt=10, test_fraction=0))
    sheet = json.loads((tmp_path / "out" / "datasheet.json").read_text())
    assert sheet == summary.datasheet
    assert sheet["chosen_models"]["model-0"] == 6
    assert 0 <= sheet["position"]["chosen_shown_left_rate"] <= 1
    assert "chosen shown on the left" in (tmp_path / "out" / "datasheet.md").read_text()


def test_export_without_votes(store, tmp_path):
    summary = export_dataset(store, tmp_path / "out", ExportSettings())
    assert summary.rows == 0
    assert (tmp_path / "out" / "train.jsonl").read_text() == ""


def test_cli_export_new_options(tmp_path, capsys):
    from engine.cli import main
    from engine.workspace import Workspace

    workspace = Workspace(tmp_path / "ws")
    workspace.create()
    with Store(workspace.store_path) as workspace_store:
        populate(workspace_store, prompts=3)
    code = main([
        "export", "--workspace", str(workspace.root), "--out", str(tmp_path / "out"),
        "--weighting", "none", "--max-rows-per-cluster", "5", "--no-inverse-propensity",
    ])
    sheet = json.loads((tmp_path / "out" / "datasheet.json").read_text())
    assert code == 0
    assert sheet["counts"]["excluded_pairs"]["per_cluster_cap"] == 7
    assert sheet["options"]["weighting"] == "none"
    assert sheet["options"]["inverse_propensity"] is False
    assert "KTO rows" in capsys.readouterr().out
