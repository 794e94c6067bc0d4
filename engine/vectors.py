"""The workspace's embedding space: which model embeds, the content-hash cache and the FAISS indexes.

A workspace embeds with one model and one long-text mode for its whole life, recorded in the store
on the first ingest, because vectors of two models cannot be compared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from engine.errors import ConfigError, InputError
from engine.store import Store
from engine.workspace import Workspace

logger = logging.getLogger(__name__)

EMBED_CHUNK = 256  # texts per Embedder.embed call, so a non-finite vector costs one chunk's retry


@dataclass(frozen=True)
class EmbeddingSpace:
    model: str  # canonical model name
    mode: str  # "windows-<max_windows>" or "truncate"
    truncate: bool
    max_windows: int

    @classmethod
    def for_workspace(
        cls,
        workspace: Workspace,
        store: Store,
        *,
        requested_model: str | None = None,
        requested_truncate: bool = False,
    ) -> EmbeddingSpace:
        """Return the workspace's recorded space, or the one its config and the requests give."""
        from engine.embedding import canonical_model_name

        settings = workspace.load_config().embedding
        configured = canonical_model_name(requested_model or settings.model)
        truncate = requested_truncate or settings.truncate
        mode = "truncate" if truncate else f"windows-{settings.max_windows}"
        stored_model = store.get_meta("embedding_model")
        stored_mode = store.get_meta("embedding_mode")
        if stored_model is not None:
            if requested_model is not None and configured != stored_model:
                raise ConfigError(
                    f"this workspace embeds with {stored_model!r}, so --model {requested_model!r} "
                    "would mix incompatible vectors; use a new --workspace for another model"
                )
            if stored_mode != mode:
                logger.warning(
                    "config embedding settings (%s) differ from the workspace's recorded mode %s; "
                    "the recorded mode is used", mode, stored_mode,
                )
            mode = stored_mode or mode
            configured = stored_model
        truncate = mode == "truncate"
        max_windows = settings.max_windows if truncate else int(mode.split("-", 1)[1])
        return cls(model=configured, mode=mode, truncate=truncate, max_windows=max_windows)

    def record(self, store: Store) -> None:
        """Store the model and mode in the workspace (inside the caller's transaction)."""
        store.set_meta("embedding_model", self.model)
        store.set_meta("embedding_mode", self.mode)

    def make_embedder(self):  # -> engine.embedding.Embedder
        from engine.embedding import Embedder

        return Embedder(self.model, truncate=self.truncate, max_windows=self.max_windows)


@dataclass
class EmbedOutcome:
    vectors: dict[str, tuple[np.ndarray, int, int, bool]] = field(default_factory=dict)
    embedded: int = 0
    invalid: set[str] = field(default_factory=set)  # hashes whose embedding was not finite


def embed_missing(
    store: Store,
    space: EmbeddingSpace,
    texts_by_hash: dict[str, str],
    *,
    embedder_factory: Callable[[EmbeddingSpace], object] | None = None,
) -> EmbedOutcome:
    """Embed the texts that the cache lacks; the model is loaded only when there is one to embed."""
    outcome = EmbedOutcome()
    cached = store.cached_embeddings(space.model, space.mode, texts_by_hash)
    missing = [digest for digest in texts_by_hash if digest not in cached]
    if not missing:
        return outcome
    embedder = (embedder_factory or EmbeddingSpace.make_embedder)(space)
    logger.info("embedding %d texts with %s", len(missing), space.model)
    for start in range(0, len(missing), EMBED_CHUNK):
        chunk = missing[start : start + EMBED_CHUNK]
        _embed_chunk(embedder, chunk, texts_by_hash, outcome)
    return outcome


def _embed_chunk(embedder, hashes: list[str], texts_by_hash: dict[str, str], outcome: EmbedOutcome) -> None:
    try:
        result = embedder.embed([texts_by_hash[digest] for digest in hashes])
    except InputError:
        if len(hashes) == 1:
            outcome.invalid.add(hashes[0])
            return
        # Embed one text at a time to find the texts whose vectors are not finite.
        for digest in hashes:
            _embed_chunk(embedder, [digest], texts_by_hash, outcome)
        return
    for position, digest in enumerate(hashes):
        vector = np.asarray(result.vectors[position], dtype=np.float32)
        if not np.all(np.isfinite(vector)):
            outcome.invalid.add(digest)
            continue
        outcome.vectors[digest] = (
            vector,
            int(result.n_tokens[position]),
            int(result.n_windows[position]),
            bool(result.truncated[position]),
        )
        outcome.embedded += 1


def index_path(workspace: Workspace, table: Literal["responses", "prompts"]) -> Path:
    return workspace.index_dir / f"{table}.faiss"


def sync_indexes(workspace: Workspace, store: Store, space: EmbeddingSpace) -> None:
    """Bring both FAISS indexes in line with the store: add new rows, rebuild a broken file."""
    for table in ("responses", "prompts"):
        load_vectors(workspace, store, space, table)


def load_vectors(
    workspace: Workspace,
    store: Store,
    space: EmbeddingSpace,
    table: Literal["responses", "prompts"] = "responses",
) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows (N,), vectors (N, D)) of `table` from its FAISS index, updated from the store."""
    from engine.index import VectorIndex

    rows, vectors = store.embedding_matrix(table, space.model, space.mode)
    path = index_path(workspace, table)
    if len(rows) == 0:
        return rows, vectors
    index = None
    if path.exists():
        try:
            index = VectorIndex.load(path)
        except Exception as error:  # a broken file is derived data: rebuild it from the store
            logger.warning("rebuilding %s: %s", path, error)
    if index is not None and index.dimension != vectors.shape[1]:
        logger.warning("rebuilding %s: dimension %d, expected %d", path, index.dimension, vectors.shape[1])
        index = None
    if index is not None:
        indexed = set(index.ids().tolist())
        if not indexed.issubset(set(rows.tolist())):
            logger.warning("rebuilding %s: it contains ids that are not in the store", path)
            index = None
    if index is None:
        index = VectorIndex(vectors.shape[1])
        indexed = set()
    new = np.array([position for position, row in enumerate(rows) if row not in indexed], dtype=np.int64)
    if len(new):
        index.add(rows[new], vectors[new])
        path.parent.mkdir(parents=True, exist_ok=True)
        index.save(path)
    return rows, vectors
