"""Model outputs for the offline simulator: responses grouped by prompt, embedded through a file cache.

The simulator works without a workspace, so it reads the outputs file directly and keeps its own
embedding cache: an `.npz` file mapping the SHA-256 of each embedded text to its vector. A corpus is
embedded once and every later run reads the cache.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.records import FieldMap, read_outputs
from engine.store import text_hash

logger = logging.getLogger(__name__)

# Texts per Embedder.embed call, and per cache save, so an interrupted run keeps what it embedded.
CACHE_CHUNK = 512


@dataclass(frozen=True)
class SimulationCorpus:
    """Responses of an outputs file in file order, with prompt positions and metadata.

    Attributes:
        prompt_ids: (P,) prompt id of each prompt position.
        response_ids: (R,) response id of each response position.
        response_prompt: (R,) int64 prompt position of each response.
        models: (R,) generator model of each response, None when the file has none.
        texts: (R,) response texts.
        metadata: (R,) the row's other fields (for example `answer_key`, `correct`).
        prompts: (P,) prompt text of each prompt position, from the first row of that prompt id.
    """

    prompt_ids: list[str]
    response_ids: list[str]
    response_prompt: np.ndarray
    models: list[str | None]
    texts: list[str]
    metadata: list[dict[str, Any]]
    prompts: list[str]

    @property
    def n_responses(self) -> int:
        return len(self.response_ids)

    def field_values(self, name: str) -> list[Any]:
        """Return the metadata field `name` of every response, None where a row lacks it."""
        return [row.get(name) for row in self.metadata]


def read_corpus(path: Path, fields: FieldMap = FieldMap()) -> SimulationCorpus:
    """Read an outputs file into a SimulationCorpus; a duplicate response id keeps its first row.

    Raises InputError when the file has no valid row. Invalid rows are logged and skipped.
    """
    result = read_outputs(path, fields)
    for problem in result.problems[:10]:
        logger.warning("skipped invalid row %s", problem)
    if not result.records:
        raise InputError(f"{path}: no valid output rows; check the field names (--prompt-field, --response-field)")

    prompt_position: dict[str, int] = {}
    prompt_texts: list[str] = []
    seen_ids: set[str] = set()
    response_ids, response_prompt, models, texts, metadata = [], [], [], [], []
    for record in result.records:
        if record.response_id in seen_ids:
            logger.warning("response id %r appears twice in %s; the first row is kept", record.response_id, path)
            continue
        seen_ids.add(record.response_id)
        position = prompt_position.setdefault(record.prompt_id, len(prompt_position))
        if position == len(prompt_texts):
            prompt_texts.append(record.prompt)
        response_ids.append(record.response_id)
        response_prompt.append(position)
        models.append(record.model)
        texts.append(record.response)
        metadata.append(record.metadata)
    return SimulationCorpus(
        prompt_ids=list(prompt_position),
        response_ids=response_ids,
        response_prompt=np.asarray(response_prompt, dtype=np.int64),
        models=models,
        texts=texts,
        metadata=metadata,
        prompts=prompt_texts,
    )


def text_for_embedding(text: str, tail_chars: int | None) -> str:
    """Return the part of a response that is embedded: all of it, or its last `tail_chars` characters."""
    if tail_chars is None or len(text) <= tail_chars:
        return text
    return text[-tail_chars:]


def embed_with_cache(
    texts: list[str],
    cache_path: Path,
    *,
    model_name: str | None = None,
    truncate: bool = False,
    tail_chars: int | None = None,
) -> np.ndarray:
    """Embed texts through an `.npz` cache keyed by the SHA-256 of the embedded text, (N, D) float32.

    The cache file belongs to one embedding model and one `truncate` setting: use one file per
    combination. `tail_chars` cuts each text to its last characters before hashing and embedding.
    """
    pieces = [text_for_embedding(text, tail_chars) for text in texts]
    hashes = [text_hash(piece) for piece in pieces]
    cached = _read_cache(cache_path)

    missing: dict[str, str] = {}
    for digest, piece in zip(hashes, pieces):
        if digest not in cached:
            missing.setdefault(digest, piece)
    if missing:
        from engine.embedding import Embedder

        logger.info("embedding %d texts not in %s", len(missing), cache_path)
        embedder = Embedder(model_name, truncate=truncate)
        items = list(missing.items())
        for start in range(0, len(items), CACHE_CHUNK):
            chunk = items[start : start + CACHE_CHUNK]
            vectors = embedder.embed([piece for _, piece in chunk]).vectors
            cached.update({digest: vector for (digest, _), vector in zip(chunk, vectors)})
            _write_cache(cache_path, cached)
            logger.info("embedded %d of %d texts", min(start + CACHE_CHUNK, len(items)), len(items))
    return np.stack([cached[digest] for digest in hashes]).astype(np.float32)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as data:
        return dict(zip(data["hashes"].tolist(), data["vectors"]))


def _write_cache(path: Path, cached: dict[str, np.ndarray]) -> None:
    _save_npz(path, hashes=np.asarray(list(cached)), vectors=np.stack(list(cached.values())))


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to an .npz through a partial file, so a crash never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def policy_logprob_with_cache(
    corpus: SimulationCorpus,
    scored: np.ndarray,
    model_name: str,
    cache_path: Path | None,
    *,
    batch_size: int = 8,
    max_length: int = 1024,
) -> np.ndarray:
    """Return each response's mean token log-probability under a policy model, (R,) float64.

    Responses where `scored` (R,) bool is False are not scored and get 0.0. `max_length` is capped
    at the model's position limit. A scored response without tokens gets the lowest
    log-probability of its prompt (see `fill_tokenless`), with a warning naming its id. The `.npz`
    cache contains one corpus, with NaN for responses without tokens: it is read when its model
    name and the hash of the scored texts and max length match, and otherwise computed again and
    overwritten.
    """
    from acquisition.policy import (
        cap_max_length,
        fill_tokenless_with_warning,
        load_policy_config,
        load_policy_tokenizer,
        policy_cache_key,
    )

    model_key = policy_cache_key(model_name)
    tokenizer = load_policy_tokenizer(model_name)
    capped = cap_max_length(max_length, load_policy_config(model_name), tokenizer)
    digest = _policy_texts_hash(corpus, scored, capped)
    logprob = None
    if cache_path is not None:
        logprob = _read_policy_cache(cache_path, model_key, digest)
        if logprob is not None:
            logger.info("policy log-probabilities read from %s", cache_path)
    if logprob is None:
        logprob = _score_policy(corpus, scored, model_name, tokenizer, batch_size=batch_size, max_length=capped)
        if cache_path is not None:
            _save_npz(cache_path, model=np.asarray(model_key), texts_hash=np.asarray(digest), logprob=logprob)
    return fill_tokenless_with_warning(logprob, corpus.response_prompt, corpus.response_ids, model_key)


def _score_policy(
    corpus: SimulationCorpus, scored: np.ndarray, model_name: str, tokenizer: Any, *, batch_size: int, max_length: int
) -> np.ndarray:
    """Score the responses where `scored` is True, (R,) float64: 0.0 where not scored, NaN without tokens."""
    from acquisition.policy import has_tokens, load_policy_model, mean_token_logprob

    positions, tokenless = [], []
    for position in np.flatnonzero(scored).tolist():
        (positions if has_tokens(tokenizer, corpus.texts[position]) else tokenless).append(position)
    logprob = np.zeros(corpus.n_responses)
    logprob[tokenless] = np.nan
    logger.info("scoring %d responses under the policy model %s", len(positions), model_name)
    if not positions:
        return logprob
    model = load_policy_model(model_name)
    logprob[positions] = mean_token_logprob(
        model,
        tokenizer,
        [corpus.prompts[corpus.response_prompt[position]] for position in positions],
        [corpus.texts[position] for position in positions],
        batch_size=batch_size,
        max_length=max_length,
    )
    return logprob


def _policy_texts_hash(corpus: SimulationCorpus, scored: np.ndarray, max_length: int) -> str:
    """Return a SHA-256 over max_length and each response's scored flag, prompt hash and text hash."""
    digest = hashlib.sha256(f"max_length={max_length}\n".encode("utf-8"))
    for position, text in enumerate(corpus.texts):
        prompt = corpus.prompts[corpus.response_prompt[position]]
        line = f"{int(scored[position])} {text_hash(prompt)} {text_hash(text)}\n"
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def _read_policy_cache(path: Path, model_key: str, digest: str) -> np.ndarray | None:
    """Return the cached log-probabilities, or None (with a log line) when the file is missing or stale."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            cached_model, cached_digest, logprob = str(data["model"]), str(data["texts_hash"]), data["logprob"]
    except (OSError, ValueError, KeyError) as error:
        logger.warning("policy cache %s is unreadable (%s); computing the log-probabilities again", path, error)
        return None
    if cached_model != model_key or cached_digest != digest:
        reason = f"the model {cached_model!r}" if cached_model != model_key else "other texts"
        logger.warning(
            "policy cache %s contains log-probabilities for %s; computing them again for %s and replacing the file",
            path, reason, model_key,
        )
        return None
    return logprob.astype(np.float64)
