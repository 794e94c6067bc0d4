"""Input shapes of the export: conversations, echoed prompts, whitespace-only pairs, schema checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.export import export_dataset
from engine.export_shapes import (
    check_preference_file,
    check_preference_rows,
    preference_texts,
    split_conversations,
    strip_prompt_echo,
)
from engine.store import Store, make_pair_id, utc_now
from engine.workspace import ExportSettings

USER = {"role": "user", "content": "Bonjour 👋"}
SYSTEM = {"role": "system", "content": "Réponds en français."}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_split_multi_turn():
    history = [SYSTEM, USER, assistant("Salut !"), {"role": "user", "content": "Et 2+2 ?"}]
    prompt, chosen, rejected = split_conversations(history + [assistant("4")], history + [assistant("5")])
    assert prompt == history
    assert chosen == assistant("4")
    assert rejected == assistant("5")


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ([USER, assistant("a")], [{"role": "user", "content": "other"}, assistant("b")], "share no leading message"),
        ([USER, assistant("a")], [USER], "prefix of the other"),
        ([USER, assistant("a"), USER, assistant("b")], [USER, assistant("c")], "more than their last assistant turn"),
        ([USER, {"role": "user", "content": "x"}], [USER, {"role": "user", "content": "y"}], "not an assistant turn"),
        ([USER, assistant("  ")], [USER, assistant("b")], "empty"),
        ([USER, {"role": "assistant"}], [USER, assistant("b")], "role and content"),
        ("not a list", [USER, assistant("b")], "non-empty list"),
    ],
)
def test_split_rejects_with_reason(chosen, rejected, reason):
    result = split_conversations(chosen, rejected)
    assert isinstance(result, str)
    assert reason in result


def test_strip_prompt_echo():
    assert strip_prompt_echo("Q: 2+2?", "Q: 2+2?\nA: 4") == "\nA: 4"


def test_strip_prompt_echo_partial():
    assert strip_prompt_echo("Q: 2+2?", "Q: 2+3? is another question") == "Q: 2+3? is another question"


def test_texts_echo_only_rejected():
    assert "only repeats the prompt" in preference_texts("Q?", "Q?", "A", {}, {})


def test_texts_whitespace_only_rejected():
    assert "only in whitespace" in preference_texts("Q?", "a  b\n", " a b", {}, {})


def test_texts_one_conversation_rejected():
    assert "only one response" in preference_texts("Q?", "a", "b", {"messages": [USER, assistant("a")]}, {})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": "a", "rejected": "b"}, "row 1: missing 'prompt'"),
        ({"prompt": "p", "rejected": "b"}, "row 1: missing 'chosen'"),
        ({"prompt": "p", "chosen": "a"}, "row 1: missing 'rejected'"),
        ({"prompt": "p", "chosen": "a", "rejected": None}, "row 1: missing 'rejected'"),
        ({"prompt": "p", "chosen": "a", "rejected": 3}, "'rejected' must be a string"),
        ({"prompt": "p", "chosen": "a b", "rejected": "ab"}, "differ only in whitespace"),
        ({"prompt": [USER], "chosen": [assistant("a")], "rejected": "b"}, "'rejected': messages must be"),
    ],
)
def test_schema_rejects_row(row, message):
    with pytest.raises(InputError, match=message):
        check_preference_rows([row], source="rows.jsonl")


def test_schema_names_row_and_pair():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "pair_id": "pair-7"}]
    with pytest.raises(InputError, match=r"rows\.jsonl row 2 \(pair_id pair-7\): missing 'rejected'"):
        check_preference_rows(rows, source="rows.jsonl")


def test_schema_kto_label():
    with pytest.raises(InputError, match="row 1: 'label' must be true or false"):
        check_preference_rows([{"prompt": "p", "completion": "c", "label": "yes"}], source="kto", kind="kto")


def test_schema_file_missing_chosen(tmp_path: Path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(InputError, match="train.jsonl row 2: missing 'chosen', 'rejected'"):
        check_preference_file(path)


def add_pair(store: Store, prompt: str, responses: list[tuple[str, dict]], winner: str = "a") -> str:
    """Store one prompt, two responses (text, metadata) and three votes for `winner`; return the pair id."""
    with store.transaction() as db:
        if db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 0:
            db.execute(
                "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
                "VALUES ('hybrid', 1, 0, 1, 0, '{}', ?)",
                (utc_now(),),
            )
        prompt_id = f"p{db.execute('SELECT COUNT(*) FROM prompts').fetchone()[0]}"
        prompt_row = db.execute(
            "INSERT INTO prompts (prompt_id, text, text_hash) VALUES (?, ?, ?)", (prompt_id, prompt, prompt_id)
        ).lastrowid
        rows = []
        for index, (text, metadata) in enumerate(responses):
            rows.append(
                db.execute(
                    "INSERT INTO responses (response_id, prompt_row, model, text, text_hash, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                    (f"{prompt_id}-r{index}", prompt_row, f"m{index}", text, f"{prompt_id}-{index}", json.dumps(metadata)),
                ).lastrowid
            )
        pair_id = make_pair_id(f"{prompt_id}-r0", f"{prompt_id}-r1")
        db.execute(
            "INSERT INTO pairs (pair_id, prompt_row, response_a, response_b, round_id, rank, left_side) VALUES (?, ?, ?, ?, 1, 0, 'a')",
            (pair_id, prompt_row, rows[0], rows[1]),
        )
        for k in range(3):
            db.execute(
                "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id) VALUES (?, ?, ?, 'a', 'test', ?)",
                (pair_id, f"annotator-{k}", winner, f"{pair_id}/{k}"),
            )
    return pair_id


@pytest.fixture
def shaped_export(tmp_path: Path):
    """An export of one conversation pair, one echoed-prompt pair, one whitespace pair and one bad conversation."""
    history = [SYSTEM, USER, assistant("Salut !"), {"role": "user", "content": "Et 2+2 ?"}]
    with Store(tmp_path / "store.sqlite3") as store:
        ids = {
            "conversation": add_pair(store, "Et 2+2 ?", [("4", {"messages": history + [assistant("4")]}), ("5", {"messages": history + [assistant("5")]})]),
            "echo": add_pair(store, "Complète : le ciel est", [("Complète : le ciel est bleu.", {}), ("Complète : le ciel est vert.", {})]),
            "whitespace": add_pair(store, "Dis oui", [("oui  !", {}), ("oui !\n", {})]),
            "bad": add_pair(store, "x", [("a", {"messages": [USER, assistant("a")]}), ("b", {"messages": [SYSTEM, assistant("b")]})]),
        }
        summary = export_dataset(store, tmp_path / "out", ExportSettings(test_fraction=0))
    standard = {row["pair_id"]: row for row in map(json.loads, (tmp_path / "out" / "train.jsonl").read_text().splitlines())}
    conversational = {row["pair_id"]: row for row in map(json.loads, (tmp_path / "out" / "conversational" / "train.jsonl").read_text().splitlines())}
    return ids, standard, conversational, summary.datasheet


def test_export_conversation_prompt(shaped_export):
    ids, _, conversational, _ = shaped_export
    row = conversational[ids["conversation"]]
    assert row["prompt"][-1] == {"role": "user", "content": "Et 2+2 ?"}
    assert len(row["prompt"]) == 4
    assert row["chosen"] == [assistant("4")]


def test_export_echo_removed(shaped_export):
    ids, standard, _, _ = shaped_export
    assert standard[ids["echo"]]["chosen"] == " bleu."


def test_export_whitespace_never_emitted(shaped_export):
    ids, standard, _, sheet = shaped_export
    assert ids["whitespace"] not in standard
    assert sheet["counts"]["excluded_pairs"]["whitespace_only_difference"] == 1


def test_export_bad_conversation_reason(shaped_export):
    ids, standard, _, sheet = shaped_export
    assert ids["bad"] not in standard
    assert {"pair_id": ids["bad"], "reason": "the conversations share no leading message, so there is no common prompt"} in sheet["rejected_rows"]
