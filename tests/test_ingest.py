"""Ingest: validation of bad input, duplicates, the embedding cache and the FAISS index."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import InputError
from engine.index import VectorIndex
from engine.ingest import ingest_file
from engine.records import FieldMap, read_outputs
from engine.store import Store
from engine.vectors import index_path
from engine.workspace import Workspace

DIMENSION = 8


class HashEmbedder:
    """A deterministic fake embedder for validation tests; records what it was asked to embed."""

    def __init__(self, nan_texts: tuple[str, ...] = ()):
        self.calls: list[list[str]] = []
        self.nan_texts = nan_texts

    def embed(self, texts):
        from engine.embedding import EmbeddingResult

        self.calls.append(list(texts))
        vectors = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        for position, text in enumerate(texts):
            generator = np.random.default_rng(abs(hash(text)) % (2**32))
            vector = generator.normal(size=DIMENSION).astype(np.float32)
            vectors[position] = vector / np.linalg.norm(vector)
            if text in self.nan_texts:
                vectors[position] = np.nan
        count = len(texts)
        return EmbeddingResult(
            vectors=vectors,
            n_tokens=np.array([len(text.split()) for text in texts], dtype=np.int64),
            n_windows=np.ones(count, dtype=np.int64),
            truncated=np.array([len(text) > 100_000 for text in texts], dtype=bool),
        )


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(prompt_id: str, response_id: str, response: object, *, prompt: str | None = None, **extra) -> dict:
    return {
        "prompt_id": prompt_id,
        "prompt": prompt if prompt is not None else f"Question {prompt_id}?",
        "response_id": response_id,
        "model": "m",
        "response": response,
        **extra,
    }


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    workspace = Workspace(tmp_path / "ws")
    workspace.create()
    return workspace


@pytest.fixture
def store(workspace: Workspace):
    with Store(workspace.store_path) as store:
        yield store


def ingest(workspace, store, path, embedder=None, **options):
    embedder = embedder or HashEmbedder()
    return ingest_file(workspace, store, path, embedder_factory=lambda space: embedder, **options)


def test_bad_rows_reported_with_line(tmp_path, workspace, store):
    path = write_jsonl(
        tmp_path / "outputs.jsonl",
        [
            row("p1", "r1", "fine"),
            '{"prompt_id": "p1", "prompt": "Question p1?", "response": ',
            row("p1", "r3", True),
            row("p1", "r4", 42),
            row("p1", "r5", "   "),
            row("p1", "r6", ""),
            {"prompt_id": "p1", "response_id": "r7", "response": "no prompt"},
            {"prompt_id": "p1", "prompt": "Question p1?", "response_id": "r8"},
            row("p1", "r9", "also fine"),
        ],
    )
    report = ingest(workspace, store, path)
    messages = {problem.location.line: problem.message for problem in report.problems}
    assert report.responses_added == 2
    assert "malformed JSON" in messages[2]
    assert "must be a string, found bool true" in messages[3]
    assert "found int 42" in messages[4]
    assert "whitespace-only" in messages[5]
    assert "empty" in messages[6]
    assert "missing prompt field 'prompt'" in messages[7]
    assert "missing response field 'response'" in messages[8]
    assert all(str(path) in str(problem) for problem in report.problems)


def test_non_utf8_line_rejected(tmp_path, workspace, store):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(row("p1", "r1", "ok")).encode() + b"\n"
    bad = json.dumps(row("p1", "r2", "caf\u00e9"), ensure_ascii=False).encode("utf-8").replace("é".encode(), b"\xe9") + b"\n"
    path.write_bytes(good + bad + json.dumps(row("p1", "r3", "fine")).encode() + b"\n")
    report = ingest(workspace, store, path)
    assert [problem.location.line for problem in report.problems] == [2]
    assert "not UTF-8" in report.problems[0].message
    assert report.responses_added == 2


def test_strict_stores_nothing(tmp_path, workspace, store):
    ingest(workspace, store, write_jsonl(tmp_path / "a.jsonl", [row("p0", "r0", "kept"), row("p0", "r00", "too")]))
    path = write_jsonl(tmp_path / "b.jsonl", [row("p1", "r1", "fine"), row("p1", "r2", True)])
    with pytest.raises(InputError, match=r"b.jsonl:2: response must be a string"):
        ingest(workspace, store, path, strict=True)
    assert store.count("SELECT COUNT(*) FROM responses") == 2
    assert store.count("SELECT COUNT(*) FROM prompts") == 1


def test_reused_response_id_rejected(tmp_path, workspace, store):
    ingest(workspace, store, write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "first text"), row("p1", "r2", "x")]))
    report = ingest(workspace, store, write_jsonl(tmp_path / "b.jsonl", [row("p1", "r1", "other text")]))
    assert report.responses_added == 0
    assert "response id 'r1' is already stored with a different text" in report.problems[0].message
    stored = store.responses()
    assert [response.text for response in stored if response.response_id == "r1"] == ["first text"]


def test_reused_id_within_file_rejected(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "one"), row("p1", "r1", "two")])
    report = ingest(workspace, store, path)
    assert report.responses_added == 1
    assert report.problems[0].location.line == 2


def test_identical_responses_kept_once(tmp_path, workspace, store):
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [row("p1", "r1", "Canberra."), row("p1", "r2", "Sydney."), row("p1", "r3", "Canberra.")],
    )
    report = ingest(workspace, store, path)
    assert report.responses_added == 2
    assert [(d.response_id, d.kept_response_id) for d in report.duplicates] == [("r3", "r1")]
    assert store.resolve_response_ids()["r3"] == store.resolve_response_ids()["r1"]


def test_single_response_prompt_reported(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "alone"), row("p2", "r2", "x"), row("p2", "r3", "y")])
    report = ingest(workspace, store, path)
    assert report.single_response_prompts == ["p1"]


def test_prompt_id_conflict_rejected(tmp_path, workspace, store):
    path = write_jsonl(
        tmp_path / "a.jsonl", [row("p1", "r1", "x", prompt="One?"), row("p1", "r2", "y", prompt="Two?")]
    )
    report = ingest(workspace, store, path)
    assert "different prompt text" in report.problems[0].message


def test_non_finite_embedding_rejected(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "good"), row("p1", "r2", "poison"), row("p1", "r3", "ok")])
    report = ingest(workspace, store, path, embedder=HashEmbedder(nan_texts=("poison",)))
    assert report.responses_added == 2
    assert "embedding of response 'r2' is not finite" in report.problems[0].message
    assert report.problems[0].location.line == 2


def test_reingest_embeds_nothing(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "a"), row("p1", "r2", "b")])
    ingest(workspace, store, path)
    embedder = HashEmbedder()
    report = ingest(workspace, store, path, embedder=embedder)
    assert embedder.calls == []
    assert report.already_stored == 2
    assert report.responses_added == 0


def test_same_text_new_prompt_uses_cache(tmp_path, workspace, store):
    ingest(workspace, store, write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "shared answer"), row("p1", "r2", "b")]))
    embedder = HashEmbedder()
    ingest(workspace, store, write_jsonl(tmp_path / "b.jsonl", [row("p2", "r3", "shared answer")]), embedder=embedder)
    assert embedder.calls == [["Question p2?"]]


def test_long_response_stored_whole(tmp_path, workspace, store):
    long_text = "word " * 60_000  # 300,000 characters
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", long_text), row("p1", "r2", "short")])
    report = ingest(workspace, store, path)
    stored = {response.response_id: response.text for response in store.responses()}
    assert stored["r1"] == long_text
    assert report.truncated_for_embedding == ["r1"]


def test_ids_derived_when_absent(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q?", "response": "x"}, {"prompt": "Q?", "response": "y"}])
    ingest(workspace, store, path)
    ids = sorted(response.response_id for response in store.responses())
    assert all(response_id.startswith("r-") for response_id in ids)
    assert len({response.prompt_id for response in store.responses()}) == 1


def test_metadata_kept(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "x", correct=True, answer_key="42"), row("p1", "r2", "y")])
    ingest(workspace, store, path)
    metadata = {response.response_id: response.metadata for response in store.responses()}
    assert metadata["r1"]["correct"] is True
    assert metadata["r1"]["answer_key"] == "42"


def test_unicode_round_trip(tmp_path, workspace, store):
    text = "Crème brûlée 🍮 — e\u0301te\u0301 <b>gras</b> & <script>alert(1)</script>"
    ingest(workspace, store, write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", text), row("p1", "r2", "b")]))
    stored = {response.response_id: response.text for response in store.responses()}
    assert stored["r1"].encode("utf-8") == text.encode("utf-8")


def test_gzip_parquet_csv_read_alike(tmp_path):
    rows = [row("p1", "r1", "x, with comma"), row("p1", "r2", "y\nwith newline")]
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(item) + "\n" for item in rows))
    parquet = tmp_path / "a.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    csv_path = tmp_path / "a.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    for path in (gz, parquet, csv_path):
        result = read_outputs(path)
        assert [record.response for record in result.records] == ["x, with comma", "y\nwith newline"], path


def test_custom_field_names(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"question": "Q?", "answer": "A", "generator": "g"}])
    fields = FieldMap(prompt="question", response="answer", model="generator")
    record = read_outputs(path, fields).records[0]
    assert (record.prompt, record.response, record.model) == ("Q?", "A", "g")


def test_unsupported_suffix_rejected(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        read_outputs(path)


def test_index_matches_store(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "a"), row("p1", "r2", "b"), row("p2", "r3", "c")])
    ingest(workspace, store, path)
    index = VectorIndex.load(index_path(workspace, "responses"))
    rows = sorted(response.row for response in store.responses())
    assert sorted(index.ids().tolist()) == rows
    prompts = VectorIndex.load(index_path(workspace, "prompts"))
    assert prompts.ntotal == 2


def test_broken_index_rebuilt(tmp_path, workspace, store):
    ingest(workspace, store, write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "a"), row("p1", "r2", "b")]))
    index_path(workspace, "responses").write_bytes(b"garbage")
    ingest(workspace, store, write_jsonl(tmp_path / "b.jsonl", [row("p1", "r3", "c")]))
    index = VectorIndex.load(index_path(workspace, "responses"))
    assert index.ntotal == 3


def test_same_prompt_text_merged(tmp_path, workspace, store):
    first = write_jsonl(tmp_path / "a.jsonl", [row("a1", "x1", "Paris", prompt="Capital?"), row("a1", "x2", "Lyon", prompt="Capital?")])
    second = write_jsonl(tmp_path / "b.jsonl", [row("b1", "y1", "Paris", prompt="Capital?"), row("b1", "y2", "Nice", prompt="Capital?")])
    ingest(workspace, store, first)
    report = ingest(workspace, store, second)
    assert report.prompts_merged == 1
    assert store.count("SELECT COUNT(*) FROM prompts") == 1
    assert store.count("SELECT COUNT(*) FROM responses") == 3
    assert store.resolve_response_ids()["y1"] == store.resolve_response_ids()["x1"]
    again = ingest(workspace, store, second)
    assert again.already_stored == 2


def test_zero_width_response_rejected(tmp_path, workspace, store):
    path = write_jsonl(tmp_path / "a.jsonl", [row("p1", "r1", "\u200b"), row("p1", "r2", None), row("p1", "r3", "ok")])
    report = ingest(workspace, store, path)
    messages = [problem.message for problem in report.problems]
    assert "whitespace-only" in messages[0]
    assert messages[1] == "response is null; fix the row or remove it"


def test_messages_must_end_with_response(tmp_path, workspace, store):
    good = [{"role": "user", "content": "Count to two."}, {"role": "assistant", "content": "1, 2"}]
    other = [{"role": "user", "content": "Count to two."}, {"role": "assistant", "content": "EXPORTED"}]
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [row("p1", "r1", "1, 2", messages=good), row("p1", "r2", "SHOWN", messages=other), row("p1", "r3", "two", messages=good[:1])],
    )
    report = ingest(workspace, store, path)
    assert report.responses_added == 1
    assert [problem.location.line for problem in report.problems] == [2, 3]
    assert "last turn is the assistant turn" in report.problems[0].message


def test_byte_order_mark_accepted(tmp_path, workspace, store):
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps(row("p1", "r1", "x")), json.dumps(row("p1", "r2", "y"))]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    report = ingest(workspace, store, path)
    assert report.problems == []
    assert report.responses_added == 2
