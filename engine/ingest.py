"""Ingest model outputs: validate rows, store prompts and responses, embed them and index the vectors.

Nothing is written until every row has been checked and every new text embedded. The rows then go
into the store in one transaction, and the FAISS indexes are brought up to date from the store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, InputError
from engine.records import FieldMap, Location, OutputRecord, RowProblem, read_outputs
from engine.store import Store, text_hash
from engine.vectors import EmbeddingSpace, embed_missing, sync_indexes
from engine.workspace import Workspace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Duplicate:
    """A response whose text repeats another response of the same prompt; kept once."""

    response_id: str
    kept_response_id: str
    location: Location


@dataclass
class IngestReport:
    path: Path
    rows_read: int = 0
    prompts_added: int = 0
    prompts_merged: int = 0  # new prompt ids whose text repeats a prompt, merged into it
    responses_added: int = 0
    already_stored: int = 0
    duplicates: list[Duplicate] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    single_response_prompts: list[str] = field(default_factory=list)
    texts_embedded: int = 0
    texts_from_cache: int = 0
    truncated_for_embedding: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """Additions of one ingest, decided before anything is written."""

    prompts: dict[str, OutputRecord] = field(default_factory=dict)  # prompt_id -> first record
    responses: list[OutputRecord] = field(default_factory=list)
    aliases: list[tuple[OutputRecord, str]] = field(default_factory=list)  # (record, kept response id)
    prompt_aliases: dict[str, str] = field(default_factory=dict)  # alias prompt id -> prompt id kept


def ingest_file(
    workspace: Workspace,
    store: Store,
    path: Path,
    *,
    fields: FieldMap = FieldMap(),
    model: str | None = None,
    truncate: bool = False,
    strict: bool = False,
    embedder_factory: Callable[[EmbeddingSpace], object] | None = None,
) -> IngestReport:
    """Ingest one outputs file into the workspace and return what was added and what was rejected.

    Invalid rows are skipped and reported; with `strict=True` any invalid row raises InputError and
    nothing is stored.
    """
    space = EmbeddingSpace.for_workspace(workspace, store, requested_model=model, requested_truncate=truncate)
    report = IngestReport(path=path)
    read = read_outputs(path, fields)
    report.rows_read = len(read.records) + len(read.problems)
    report.problems.extend(read.problems)

    plan = _plan_additions(store, read.records, report)
    if strict and report.problems:
        raise InputError(_problem_summary(path, report.problems, "nothing was stored"))

    texts_by_hash = {text_hash(record.prompt): record.prompt for record in plan.prompts.values()}
    texts_by_hash.update({text_hash(record.response): record.response for record in plan.responses})
    embedded = embed_missing(store, space, texts_by_hash, embedder_factory=embedder_factory)
    report.texts_embedded = embedded.embedded
    report.texts_from_cache = len(texts_by_hash) - embedded.embedded - len(embedded.invalid)
    _drop_invalid_embeddings(plan, embedded.invalid, report)
    if strict and report.problems:
        raise InputError(_problem_summary(path, report.problems, "nothing was stored"))

    _write(store, space, plan, embedded.vectors, report)
    sync_indexes(workspace, store, space)
    report.single_response_prompts = _single_response_prompts(store, {r.prompt_id for r in plan.responses})
    logger.info(
        "ingested %s: %d prompts and %d responses added, %d rows rejected",
        path, report.prompts_added, report.responses_added, len(report.problems),
    )
    return report


def _plan_additions(store: Store, records: list[OutputRecord], report: IngestReport) -> _Plan:
    """Check records against the store and each other; decide what to add."""
    stored_prompts = store.prompt_rows_by_id()
    stored_responses = store.response_keys()
    stored_aliases = store.aliases()
    stored_prompt_ids = {row: prompt_id for prompt_id, (row, _) in stored_prompts.items()}
    # (prompt_id, text hash) -> response id, for everything stored or planned
    by_content: dict[tuple[str, str], str] = {
        (stored_prompt_ids[prompt_row], digest): response_id
        for response_id, (_, digest, prompt_row) in stored_responses.items()
    }
    planned_ids: dict[str, tuple[str, str]] = {}  # response id -> (prompt_id, text hash)
    prompt_aliases = store.prompt_aliases()
    prompt_by_text = {digest: prompt_id for prompt_id, (_, digest) in stored_prompts.items()}
    plan = _Plan()

    for record in records:
        prompt_digest = text_hash(record.prompt)
        response_digest = text_hash(record.response)
        record = _merge_prompt_by_text(record, prompt_digest, stored_prompts, prompt_aliases, prompt_by_text, plan)
        problem = _prompt_conflict(record, prompt_digest, stored_prompts, plan)
        if problem is None:
            problem = _response_id_conflict(
                record, response_digest, stored_responses, stored_prompt_ids, planned_ids
            )
        if problem is not None:
            report.problems.append(RowProblem(record.location, problem))
            continue

        known = record.response_id in stored_responses or record.response_id in stored_aliases
        if known or record.response_id in planned_ids:
            report.already_stored += 1
            continue
        if record.prompt_id not in stored_prompts and record.prompt_id not in plan.prompts:
            plan.prompts[record.prompt_id] = record
            prompt_by_text[prompt_digest] = record.prompt_id

        kept = by_content.get((record.prompt_id, response_digest))
        if kept is not None:
            plan.aliases.append((record, kept))
            report.duplicates.append(Duplicate(record.response_id, kept, record.location))
            planned_ids[record.response_id] = (record.prompt_id, response_digest)
            continue
        by_content[(record.prompt_id, response_digest)] = record.response_id
        planned_ids[record.response_id] = (record.prompt_id, response_digest)
        plan.responses.append(record)
    return plan


def _merge_prompt_by_text(
    record: OutputRecord,
    digest: str,
    stored_prompts: dict[str, tuple[int, str]],
    prompt_aliases: dict[str, str],
    prompt_by_text: dict[str, str],
    plan: _Plan,
) -> OutputRecord:
    """Move a record to the stored or planned prompt that has the same text under another id."""
    prompt_id = prompt_aliases.get(record.prompt_id, record.prompt_id)
    if prompt_id not in stored_prompts and prompt_id not in plan.prompts:
        same_text = prompt_by_text.get(digest)
        if same_text is not None and same_text != prompt_id:
            plan.prompt_aliases[record.prompt_id] = same_text
            prompt_aliases[record.prompt_id] = same_text
            prompt_id = same_text
    if prompt_id == record.prompt_id:
        return record
    return dataclasses.replace(record, prompt_id=prompt_id)


def _prompt_conflict(
    record: OutputRecord,
    digest: str,
    stored_prompts: dict[str, tuple[int, str]],
    plan: _Plan,
) -> str | None:
    stored = stored_prompts.get(record.prompt_id)
    if stored is not None and stored[1] != digest:
        return (
            f"prompt id {record.prompt_id!r} is already stored with a different prompt text; "
            "give this prompt its own id"
        )
    planned = plan.prompts.get(record.prompt_id)
    if planned is not None and text_hash(planned.prompt) != digest:
        return (
            f"prompt id {record.prompt_id!r} has a different prompt text at {planned.location}; "
            "give each prompt its own id"
        )
    return None


def _response_id_conflict(
    record: OutputRecord,
    digest: str,
    stored_responses: dict[str, tuple[int, str, int]],
    stored_prompt_ids: dict[int, str],
    planned_ids: dict[str, tuple[str, str]],
) -> str | None:
    stored = stored_responses.get(record.response_id)
    if stored is not None:
        _, stored_digest, prompt_row = stored
        same_prompt = stored_prompt_ids[prompt_row] == record.prompt_id
        if stored_digest != digest or not same_prompt:
            return (
                f"response id {record.response_id!r} is already stored with a different text or "
                "prompt; response ids must be unique, so give this response a new id"
            )
    planned = planned_ids.get(record.response_id)
    if planned is not None and planned != (record.prompt_id, digest):
        return (
            f"response id {record.response_id!r} appears earlier in the file with a different "
            "text or prompt; response ids must be unique"
        )
    return None


def _drop_invalid_embeddings(plan: _Plan, invalid_hashes: set[str], report: IngestReport) -> None:
    """Reject responses (and prompts) whose embedding came out NaN or infinite."""
    if not invalid_hashes:
        return
    bad_prompts = {
        prompt_id for prompt_id, record in plan.prompts.items() if text_hash(record.prompt) in invalid_hashes
    }
    for prompt_id in bad_prompts:
        record = plan.prompts.pop(prompt_id)
        report.problems.append(
            RowProblem(record.location, f"embedding of prompt {prompt_id!r} is not finite; its rows were not stored")
        )
    kept = []
    for record in plan.responses:
        if record.prompt_id in bad_prompts:
            continue
        if text_hash(record.response) in invalid_hashes:
            report.problems.append(
                RowProblem(
                    record.location,
                    f"embedding of response {record.response_id!r} is not finite (NaN or infinity); "
                    "the response was not stored; check the text or try another --model",
                )
            )
            continue
        kept.append(record)
    plan.responses = kept
    plan.aliases = [(record, target) for record, target in plan.aliases if record.prompt_id not in bad_prompts]


def _write(
    store: Store,
    space: EmbeddingSpace,
    plan: _Plan,
    vectors: dict[str, tuple[np.ndarray, int, int, bool]],
    report: IngestReport,
) -> None:
    with store.transaction() as db:
        space.record(store)
        for digest, (vector, n_tokens, n_windows, truncated) in vectors.items():
            db.execute(
                "INSERT OR IGNORE INTO embeddings (model, mode, text_hash, vector, n_tokens, n_windows, truncated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (space.model, space.mode, digest, vector.astype(np.float32).tobytes(), n_tokens, n_windows, int(truncated)),
            )
        for prompt_id, record in plan.prompts.items():
            db.execute(
                "INSERT INTO prompts (prompt_id, text, text_hash, source_file, source_line) VALUES (?, ?, ?, ?, ?)",
                (prompt_id, record.prompt, text_hash(record.prompt), str(record.location.path), record.location.line),
            )
        prompt_rows = {prompt_id: row for prompt_id, (row, _) in store.prompt_rows_by_id().items()}
        cache = store.cached_embeddings(space.model, space.mode, [text_hash(r.response) for r in plan.responses])
        for record in plan.responses:
            digest = text_hash(record.response)
            _, n_tokens, n_windows, truncated = cache[digest]
            db.execute(
                "INSERT INTO responses (response_id, prompt_row, model, text, text_hash, metadata, "
                "source_file, source_line, n_tokens, n_windows, embed_truncated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.response_id, prompt_rows[record.prompt_id], record.model, record.response, digest,
                    json.dumps(record.metadata, ensure_ascii=False), str(record.location.path),
                    record.location.line, n_tokens, n_windows, int(truncated),
                ),
            )
            if truncated:
                report.truncated_for_embedding.append(record.response_id)
        for alias_id, kept_id in plan.prompt_aliases.items():
            db.execute(
                "INSERT INTO prompt_aliases (alias_id, prompt_row) VALUES (?, ?)", (alias_id, prompt_rows[kept_id])
            )
        response_rows = {key: value[0] for key, value in store.response_keys().items()}
        for record, kept_id in plan.aliases:
            db.execute(
                "INSERT INTO response_aliases (alias_id, response_row, model, source_file, source_line) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.response_id, response_rows[kept_id], record.model, str(record.location.path), record.location.line),
            )
    report.prompts_added = len(plan.prompts)
    report.prompts_merged = len(plan.prompt_aliases)
    report.responses_added = len(plan.responses)


def _single_response_prompts(store: Store, prompt_ids: set[str]) -> list[str]:
    counts = Counter(
        row["prompt_id"]
        for row in store.execute("SELECT p.prompt_id FROM responses r JOIN prompts p ON p.id = r.prompt_row")
    )
    return sorted(prompt_id for prompt_id in prompt_ids if counts[prompt_id] < 2)


def plural(count: int, noun: str) -> str:
    """Return "1 response" or "2 responses"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _problem_summary(path: Path, problems: list[RowProblem], consequence: str, limit: int = 20) -> str:
    lines = [f"{path}: {plural(len(problems), 'invalid row')}, {consequence}:"]
    lines.extend(f"  {problem}" for problem in problems[:limit])
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def format_report(report: IngestReport, limit: int = 20) -> list[str]:
    """Return the lines the CLI prints after an ingest."""
    lines = [
        f"{report.path}: {plural(report.rows_read, 'row')} read; {plural(report.prompts_added, 'prompt')} and "
        f"{plural(report.responses_added, 'response')} added; {report.already_stored} already stored",
        f"embeddings: {plural(report.texts_embedded, 'text')} embedded, {report.texts_from_cache} taken from the cache",
    ]
    if report.prompts_merged:
        lines.append(
            f"prompt ids whose text repeats another prompt's text: {report.prompts_merged} "
            "(merged into that prompt, so one text is one prompt)"
        )
    if report.rows_read == 0:
        lines.append(f"warning: {report.path} has no rows")
    if report.problems:
        lines.append(_problem_summary(report.path, report.problems, "skipped", limit))
    if report.duplicates:
        lines.append(
            f"byte-identical duplicates of another response to the same prompt: {len(report.duplicates)} "
            "(each text is kept once and never paired with itself)"
        )
        lines.extend(f"  {d.location}: {d.response_id} kept as {d.kept_response_id}" for d in report.duplicates[:limit])
        if len(report.duplicates) > limit:
            lines.append(f"  ... and {len(report.duplicates) - limit} more")
    if report.truncated_for_embedding:
        shown = ", ".join(report.truncated_for_embedding[:limit])
        lines.append(
            f"too long to embed whole: {len(report.truncated_for_embedding)} (stored whole, embedded from "
            f"their head and tail windows): {shown}"
        )
    if report.single_response_prompts:
        shown = ", ".join(report.single_response_prompts[:limit])
        lines.append(
            f"prompts with a single response, so no pair is possible for them yet: "
            f"{len(report.single_response_prompts)}: {shown}"
        )
    return lines


def ensure_model_matches(stored_model: str | None, requested: str | None) -> None:
    if stored_model is not None and requested is not None and requested != stored_model:
        raise ConfigError(
            f"this workspace embeds with {stored_model!r}, so --model {requested!r} would mix "
            "incompatible vectors; use a new --workspace for another model"
        )
