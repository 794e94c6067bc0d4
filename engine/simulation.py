"""Simulated annotators: answer open Label Studio tasks from recorded votes or from correctness.

For demos, tests and benchmarks. The answers go through the real server as annotations of
dedicated annotator users, so the pull path is the one human votes take.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.simulate import ensure_annotators, submit_annotations
from engine.annotation import Project
from engine.errors import ConfigError
from engine.records import RowProblem, iter_rows
from engine.store import PairRow, Store

logger = logging.getLogger(__name__)

OUTCOME_NAMES = {"a": "a", "b": "b", "tie": "tie", "both_bad": "both_bad", "both bad": "both_bad", "skip": "skip"}


@dataclass
class RecordedVotes:
    """Recorded outcomes keyed by the unordered pair of response rows."""

    by_pair: dict[frozenset[int], tuple[int, list[str]]] = field(default_factory=dict)  # -> (row of "a", outcomes)
    problems: list[RowProblem] = field(default_factory=list)


def load_recorded_votes(path: Path, store: Store) -> RecordedVotes:
    """Read a votes file (`response_a_id`, `response_b_id`, and `votes` or `winner`)."""
    resolve = store.resolve_response_ids()
    recorded = RecordedVotes()
    for location, row in iter_rows(path):
        if isinstance(row, RowProblem):
            recorded.problems.append(row)
            continue
        first, second = str(row.get("response_a_id", "")), str(row.get("response_b_id", ""))
        if first not in resolve or second not in resolve:
            continue  # a pair of responses this workspace does not hold
        outcomes = _outcomes(row)
        if outcomes is None:
            recorded.problems.append(
                RowProblem(location, "expected `votes` (a list of a/b/tie/both_bad) or `winner`")
            )
            continue
        key = frozenset((resolve[first], resolve[second]))
        if len(key) == 2 and key not in recorded.by_pair:
            recorded.by_pair[key] = (resolve[first], outcomes)
    return recorded


def _outcomes(row: dict[str, Any]) -> list[str] | None:
    votes = row.get("votes")
    if isinstance(votes, list) and votes:
        names = [OUTCOME_NAMES.get(str(vote).lower()) for vote in votes]
        return None if None in names else names  # type: ignore[return-value]
    winner = OUTCOME_NAMES.get(str(row.get("winner", "")).lower())
    return None if winner is None else [winner]


def choice_for(outcome: str, winner_row: int | None, pair: PairRow) -> str:
    """Turn an outcome about rows into what an annotator clicks: left, right, tie, both_bad, skip."""
    if outcome in ("tie", "both_bad", "skip"):
        return outcome
    left_row = pair.response_a if pair.left_side == "a" else pair.response_b
    return "left" if winner_row == left_row else "right"


def answers_from_votes(recorded: RecordedVotes, pair: PairRow, annotators: int) -> list[str] | None:
    entry = recorded.by_pair.get(frozenset((pair.response_a, pair.response_b)))
    if entry is None:
        return None
    row_a, outcomes = entry
    row_b = pair.response_b if row_a == pair.response_a else pair.response_a
    choices = []
    for index in range(annotators):
        outcome = outcomes[index % len(outcomes)]
        winner = {"a": row_a, "b": row_b}.get(outcome)
        choices.append(choice_for(outcome, winner, pair))
    return choices


def _is_correct(metadata: dict[str, Any]) -> bool | None:
    value = metadata.get("correct")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def answers_from_correctness(correct: dict[int, bool | None], pair: PairRow, annotators: int) -> list[str] | None:
    """Correct beats incorrect; both correct is a tie; both incorrect is both bad."""
    first, second = correct.get(pair.response_a), correct.get(pair.response_b)
    if first is None or second is None:
        return None
    if first and second:
        outcome, winner = "tie", None
    elif not first and not second:
        outcome, winner = "both_bad", None
    else:
        outcome, winner = ("a", pair.response_a) if first else ("b", pair.response_b)
    return [choice_for(outcome, winner, pair)] * annotators


@dataclass
class SimulationReport:
    open_tasks: int
    answered_tasks: int
    annotations_created: int
    left_open: int
    problems: list[RowProblem]


def simulate_annotators(
    store: Store,
    project: Project,
    *,
    annotators: int = 3,
    votes_path: Path | None = None,
    oracle: str | None = None,
) -> SimulationReport:
    """Answer the project's open tasks as `annotators` users; pairs without an answer stay open."""
    if annotators < 1:
        raise ConfigError(f"--annotators must be at least 1, got {annotators}")
    if (votes_path is None) == (oracle is None):
        raise ConfigError("give exactly one of --votes FILE and --oracle correctness")
    if oracle is not None and oracle != "correctness":
        raise ConfigError(f"unknown oracle {oracle!r}; the known oracle is 'correctness'")

    pairs = store.pairs()
    recorded = load_recorded_votes(votes_path, store) if votes_path is not None else None
    correct = None
    if recorded is None:
        correct = {response.row: _is_correct(response.metadata) for response in store.responses()}

    open_tasks = project.client.open_tasks(project.project_id)
    answers: dict[int, list[str]] = {}
    for task_id, pair_id in open_tasks:
        pair = pairs.get(pair_id)
        if pair is None:
            continue
        if recorded is not None:
            choices = answers_from_votes(recorded, pair, annotators)
        else:
            choices = answers_from_correctness(correct, pair, annotators)
        if choices is not None:
            answers[task_id] = choices

    annotator_ids = ensure_annotators(project.client, annotators)
    created = submit_annotations(project.client, project.project_id, answers, annotator_ids)
    logger.info("simulated %d annotators on %d of %d open tasks", annotators, len(answers), len(open_tasks))
    return SimulationReport(
        open_tasks=len(open_tasks),
        answered_tasks=len(answers),
        annotations_created=created,
        left_open=len(open_tasks) - len(answers),
        problems=recorded.problems if recorded is not None else [],
    )
