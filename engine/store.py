"""The SQLite store of a workspace: prompts, responses, the embedding and policy caches, rounds, pairs, votes.

Every write that belongs together runs in one transaction, so an error or an interrupted command
leaves what was stored before unchanged. Row ids of `responses` and `prompts` double as FAISS ids.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

Outcome = Literal["a", "b", "tie", "both_bad", "skip"]
OUTCOMES: tuple[str, ...] = ("a", "b", "tie", "both_bad", "skip")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    prompt_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    source_file TEXT,
    source_line INTEGER
);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    response_id TEXT NOT NULL UNIQUE,
    prompt_row INTEGER NOT NULL REFERENCES prompts(id),
    model TEXT,
    text TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    metadata TEXT NOT NULL,
    source_file TEXT,
    source_line INTEGER,
    n_tokens INTEGER,
    n_windows INTEGER,
    embed_truncated INTEGER NOT NULL DEFAULT 0,
    UNIQUE (prompt_row, text_hash)
);
-- A response id whose text duplicates another response of the same prompt, kept once under that
-- response's id.
CREATE TABLE IF NOT EXISTS response_aliases (
    alias_id TEXT PRIMARY KEY,
    response_row INTEGER NOT NULL REFERENCES responses(id),
    model TEXT,
    source_file TEXT,
    source_line INTEGER
);
-- A prompt id whose text repeats a stored prompt's text: its rows belong to that prompt, so one
-- prompt text is one prompt (never in both train and test, never paired across ids).
CREATE TABLE IF NOT EXISTS prompt_aliases (
    alias_id TEXT PRIMARY KEY,
    prompt_row INTEGER NOT NULL REFERENCES prompts(id)
);
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    n_tokens INTEGER NOT NULL,
    n_windows INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    PRIMARY KEY (model, mode, text_hash)
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    strategy TEXT NOT NULL,
    budget INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    pool_size INTEGER NOT NULL,
    votes_at_start INTEGER NOT NULL,
    options TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id TEXT PRIMARY KEY,
    prompt_row INTEGER NOT NULL REFERENCES prompts(id),
    response_a INTEGER NOT NULL REFERENCES responses(id),
    response_b INTEGER NOT NULL REFERENCES responses(id),
    round_id INTEGER NOT NULL REFERENCES rounds(id),
    rank INTEGER NOT NULL,
    score REAL,
    novelty REAL,
    uncertainty REAL,
    propensity REAL,
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    task_id INTEGER,
    project_key TEXT,
    pushed_at TEXT,
    CHECK (response_a <> response_b)
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    pair_id TEXT NOT NULL REFERENCES pairs(pair_id),
    annotator TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie', 'both_bad', 'skip')),
    shown_left TEXT NOT NULL CHECK (shown_left IN ('a', 'b')),
    source TEXT NOT NULL,
    external_id TEXT NOT NULL,
    created_at TEXT,
    updated_at TEXT,
    UNIQUE (source, external_id)
);
-- Mean token log-probability of a response given its prompt under a policy model, in nats, for
-- responses scored with at most max_length tokens of prompt and response together.
CREATE TABLE IF NOT EXISTS policy_logprobs (
    model TEXT NOT NULL,
    max_length INTEGER NOT NULL,
    prompt_hash TEXT NOT NULL,
    response_hash TEXT NOT NULL,
    logprob REAL NOT NULL,
    PRIMARY KEY (model, max_length, prompt_hash, response_hash)
);
CREATE INDEX IF NOT EXISTS responses_by_prompt ON responses (prompt_row);
CREATE INDEX IF NOT EXISTS votes_by_pair ON votes (pair_id);
"""


def text_hash(text: str) -> str:
    """Return the SHA-256 hex digest of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_pair_id(response_id_1: str, response_id_2: str) -> str:
    """Return an order-independent id for the pair of two response ids."""
    first, second = sorted((response_id_1, response_id_2))
    digest = hashlib.sha256(f"{first}\x1f{second}".encode("utf-8")).hexdigest()
    return f"pair-{digest[:16]}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ResponseRow:
    row: int
    response_id: str
    prompt_row: int
    prompt_id: str
    model: str | None
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class PairRow:
    pair_id: str
    prompt_row: int
    response_a: int
    response_b: int
    round_id: int
    left_side: str
    task_id: int | None


class Store:
    """Access to the workspace's SQLite file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA foreign_keys = ON")
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.executescript(_SCHEMA)
        self._check_schema_version()

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema_version(self) -> None:
        stored = self.get_meta("schema_version")
        if stored is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(stored) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {stored}, this prefscout reads version {SCHEMA_VERSION}"
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one IMMEDIATE transaction: all of it is stored, or none."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, tuple(parameters))

    # meta

    def get_meta(self, key: str) -> str | None:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # prompts and responses

    def prompt_rows_by_id(self) -> dict[str, tuple[int, str]]:
        """Map prompt_id -> (row, text hash) of every stored prompt."""
        rows = self.execute("SELECT id, prompt_id, text_hash FROM prompts")
        return {row["prompt_id"]: (row["id"], row["text_hash"]) for row in rows}

    def response_keys(self) -> dict[str, tuple[int, str, int]]:
        """Map response_id -> (row, text hash, prompt row) of every stored response."""
        rows = self.execute("SELECT id, response_id, text_hash, prompt_row FROM responses")
        return {row["response_id"]: (row["id"], row["text_hash"], row["prompt_row"]) for row in rows}

    def aliases(self) -> dict[str, int]:
        """Map alias response id -> row of the response kept in its place."""
        rows = self.execute("SELECT alias_id, response_row FROM response_aliases")
        return {row["alias_id"]: row["response_row"] for row in rows}

    def prompt_aliases(self) -> dict[str, str]:
        """Map alias prompt id -> id of the stored prompt with the same text."""
        rows = self.execute(
            "SELECT a.alias_id, p.prompt_id FROM prompt_aliases a JOIN prompts p ON p.id = a.prompt_row"
        )
        return {row["alias_id"]: row["prompt_id"] for row in rows}

    def resolve_response_ids(self) -> dict[str, int]:
        """Map every known response id, aliases included, to a response row."""
        resolved = {key: value[0] for key, value in self.response_keys().items()}
        resolved.update(self.aliases())
        return resolved

    def responses(self, rows: Iterable[int] | None = None) -> list[ResponseRow]:
        sql = (
            "SELECT r.id, r.response_id, r.prompt_row, p.prompt_id, r.model, r.text, r.metadata "
            "FROM responses r JOIN prompts p ON p.id = r.prompt_row"
        )
        if rows is None:
            records = self.execute(sql + " ORDER BY r.id").fetchall()
        else:
            wanted = list(rows)
            records = []
            for start in range(0, len(wanted), 900):
                chunk = wanted[start : start + 900]
                marks = ",".join("?" * len(chunk))
                records.extend(self.execute(f"{sql} WHERE r.id IN ({marks})", chunk).fetchall())
        return [
            ResponseRow(
                row=record["id"],
                response_id=record["response_id"],
                prompt_row=record["prompt_row"],
                prompt_id=record["prompt_id"],
                model=record["model"],
                text=record["text"],
                metadata=json.loads(record["metadata"]),
            )
            for record in records
        ]

    def response_table(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Return (rows (R,), prompt rows (R,), text hashes) of all responses in row order."""
        records = self.execute("SELECT id, prompt_row, text_hash FROM responses ORDER BY id").fetchall()
        rows = np.array([record["id"] for record in records], dtype=np.int64)
        prompts = np.array([record["prompt_row"] for record in records], dtype=np.int64)
        return rows, prompts, [record["text_hash"] for record in records]

    def prompt_texts(self) -> dict[int, tuple[str, str]]:
        """Map prompt row -> (prompt_id, text)."""
        rows = self.execute("SELECT id, prompt_id, text FROM prompts")
        return {row["id"]: (row["prompt_id"], row["text"]) for row in rows}

    # embedding cache

    def cached_embeddings(
        self, model: str, mode: str, hashes: Iterable[str]
    ) -> dict[str, tuple[np.ndarray, int, int, bool]]:
        """Return hash -> (vector, n_tokens, n_windows, truncated) for the hashes in the cache."""
        found: dict[str, tuple[np.ndarray, int, int, bool]] = {}
        wanted = list(dict.fromkeys(hashes))
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self.execute(
                "SELECT text_hash, vector, n_tokens, n_windows, truncated FROM embeddings "
                f"WHERE model = ? AND mode = ? AND text_hash IN ({marks})",
                [model, mode, *chunk],
            )
            for row in rows:
                vector = np.frombuffer(row["vector"], dtype=np.float32).copy()
                found[row["text_hash"]] = (vector, row["n_tokens"], row["n_windows"], bool(row["truncated"]))
        return found

    def embedding_matrix(self, table: Literal["responses", "prompts"], model: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (rows (N,), vectors (N, D) float32) of the embedded rows of `table`, in row order."""
        records = self.execute(
            f"SELECT t.id, e.vector FROM {table} t JOIN embeddings e "
            "ON e.text_hash = t.text_hash AND e.model = ? AND e.mode = ? ORDER BY t.id",
            (model, mode),
        ).fetchall()
        rows = np.array([record["id"] for record in records], dtype=np.int64)
        if not records:
            return rows, np.zeros((0, 0), dtype=np.float32)
        vectors = np.stack([np.frombuffer(record["vector"], dtype=np.float32) for record in records])
        return rows, vectors

    # policy log-probability cache

    def cached_policy_logprobs(
        self, model: str, max_length: int, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], float]:
        """Return (prompt hash, response hash) -> cached mean token log-probability, for the keys found."""
        requested = set(keys)
        response_hashes = list(dict.fromkeys(response for _, response in requested))
        found: dict[tuple[str, str], float] = {}
        for start in range(0, len(response_hashes), 900):
            chunk = response_hashes[start : start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self.execute(
                "SELECT prompt_hash, response_hash, logprob FROM policy_logprobs "
                f"WHERE model = ? AND max_length = ? AND response_hash IN ({marks})",
                [model, max_length, *chunk],
            )
            for row in rows:
                key = (row["prompt_hash"], row["response_hash"])
                if key in requested:
                    found[key] = float(row["logprob"])
        return found

    def save_policy_logprobs(self, model: str, max_length: int, values: dict[tuple[str, str], float]) -> None:
        """Store mean token log-probabilities keyed by (prompt hash, response hash), in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO policy_logprobs (model, max_length, prompt_hash, response_hash, logprob) "
                "VALUES (?, ?, ?, ?, ?)",
                [(model, max_length, prompt, response, value) for (prompt, response), value in values.items()],
            )

    # pairs and votes

    def pairs(self, pair_ids: Iterable[str] | None = None) -> dict[str, PairRow]:
        records = self.execute(
            "SELECT pair_id, prompt_row, response_a, response_b, round_id, left_side, task_id FROM pairs"
        ).fetchall()
        result = {record["pair_id"]: PairRow(**dict(record)) for record in records}
        if pair_ids is not None:
            wanted = set(pair_ids)
            result = {key: value for key, value in result.items() if key in wanted}
        return result

    def votes(self) -> list[sqlite3.Row]:
        return self.execute(
            "SELECT v.pair_id, v.annotator, v.outcome, v.shown_left, p.response_a, p.response_b, "
            "p.prompt_row FROM votes v JOIN pairs p ON p.pair_id = v.pair_id ORDER BY v.id"
        ).fetchall()

    def count(self, sql: str, parameters: Iterable[Any] = ()) -> int:
        return int(self.execute(sql, parameters).fetchone()[0])
