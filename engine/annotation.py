"""Move pairs to Label Studio as tasks and bring the annotators' votes back into the store.

The side each response is shown on is decided when the pair is selected (`pairs.left_side`), so a
pulled "left" or "right" maps back to response a or b whatever the server shows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from connectors.labelstudio.client import AnnotationRecord, LabelStudioClient, PairTask
from connectors.labelstudio.server import read_credentials, server_status
from engine.errors import ConfigError, LabelStudioError
from engine.store import PairRow, Store, utc_now
from engine.workspace import Workspace

logger = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"
SOURCE = "labelstudio"


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str
    local: bool  # the workspace's own managed server


def resolve_connection(workspace: Workspace, url: str | None = None) -> Connection:
    """Pick the server: `--url` or $LABEL_STUDIO_URL with $LABEL_STUDIO_API_KEY, else the local one."""
    url = url or os.environ.get(URL_ENV)
    if url:
        api_key = os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ConfigError(
                f"a remote Label Studio server ({url}) needs an API key: set {API_KEY_ENV} to a "
                "legacy token or a Personal Access Token from the server's Account & Settings page"
            )
        return Connection(url=url.rstrip("/"), api_key=api_key, local=False)

    status = server_status(workspace.labelstudio_dir)
    credentials = read_credentials(workspace.labelstudio_dir)
    if not status.get("running") or credentials is None:
        raise LabelStudioError(
            f"no Label Studio server is running for workspace {workspace.root}; start one with "
            f"`prefscout labelstudio start`, or set {URL_ENV} and {API_KEY_ENV} for a remote server"
        )
    return Connection(url=status["url"], api_key=credentials["api_key"], local=True)


@dataclass
class Project:
    client: LabelStudioClient
    project_id: int
    key: str  # "<url>#<project id>", stored with each pushed pair


def open_project(workspace: Workspace, store: Store, connection: Connection) -> Project:
    """Connect and return the workspace's project on that server, creating it on first use."""
    settings = workspace.load_config().labelstudio
    client = LabelStudioClient(connection.url, connection.api_key)
    client.check()
    meta_key = f"labelstudio_project:{connection.url}"
    stored = store.get_meta(meta_key)
    project_id = client.ensure_project(
        int(stored) if stored else None,
        title=settings.project_title,
        maximum_annotations=settings.maximum_annotations,
        instructions=INSTRUCTIONS,
    )
    if stored != str(project_id):
        store.set_meta(meta_key, str(project_id))
    return Project(client=client, project_id=project_id, key=f"{connection.url}#{project_id}")


INSTRUCTIONS = (
    "Read the prompt, then both responses. Pick the better response, or choose Tie when they are "
    "equally good and Both bad when neither is acceptable. Judge correctness first, then "
    "helpfulness and clarity. Skip a task you cannot judge."
)


def push_pending(workspace: Workspace, store: Store, project: Project) -> int:
    """Push every selected pair that has no task in this project yet; return how many were pushed."""
    rows = store.execute(
        "SELECT pair_id FROM pairs WHERE task_id IS NULL OR project_key IS NOT ? ORDER BY round_id, rank",
        (project.key,),
    ).fetchall()
    pending = store.pairs(row["pair_id"] for row in rows)
    if not pending:
        return 0
    tasks = _build_tasks(store, list(pending.values()))
    batch_size = workspace.load_config().labelstudio.batch_size
    task_ids = project.client.push(project.project_id, tasks, batch_size=batch_size)
    pushed_at = utc_now()
    with store.transaction() as db:
        for pair_id, task_id in task_ids.items():
            db.execute(
                "UPDATE pairs SET task_id = ?, project_key = ?, pushed_at = ? WHERE pair_id = ?",
                (task_id, project.key, pushed_at, pair_id),
            )
    logger.info("pushed %d tasks to project %s", len(task_ids), project.key)
    return len(task_ids)


def _build_tasks(store: Store, pairs: list[PairRow]) -> list[PairTask]:
    rows = {row for pair in pairs for row in (pair.response_a, pair.response_b)}
    texts = {response.row: response.text for response in store.responses(rows)}
    prompts = store.prompt_texts()
    tasks = []
    for pair in pairs:
        left, right = pair.response_a, pair.response_b
        if pair.left_side == "b":
            left, right = right, left
        tasks.append(
            PairTask(pair_id=pair.pair_id, prompt=prompts[pair.prompt_row][1], left=texts[left], right=texts[right])
        )
    return tasks


@dataclass
class PullReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    unknown_tasks: int = 0  # annotations of tasks that no prefscout pair matches
    invalid: list[str] = field(default_factory=list)


def outcome_for(choice: str, left_side: str) -> str:
    """Map a Label Studio choice (left, right, tie, both_bad, skip) to a vote outcome (a, b, ...)."""
    if choice == "left":
        return left_side
    if choice == "right":
        return "b" if left_side == "a" else "a"
    return choice


def pull_votes(store: Store, project: Project) -> PullReport:
    """Store every annotation of the project as a vote; edits replace, deletions remove."""
    result = project.client.pull(project.project_id)
    report = PullReport(invalid=list(result.invalid))
    pairs = store.pairs()
    prefix = f"{project.key}/"
    existing = {
        row["external_id"]: (row["outcome"], row["updated_at"], row["annotator"])
        for row in store.execute(
            "SELECT external_id, outcome, updated_at, annotator FROM votes WHERE source = ? AND external_id LIKE ?",
            (SOURCE, prefix + "%"),
        )
    }
    pulled: set[str] = set()
    with store.transaction() as db:
        for annotation in result.annotations:
            pair = pairs.get(annotation.pair_id)
            if pair is None:
                report.unknown_tasks += 1
                continue
            external_id = f"{prefix}{annotation.annotation_id}"
            pulled.add(external_id)
            _store_vote(db, annotation, pair, external_id, existing.get(external_id), report)
        # NOTE: this relies on pull() returning every annotation of the project; an annotation
        # absent from the server's answer was deleted there.
        for external_id in existing.keys() - pulled:
            db.execute("DELETE FROM votes WHERE source = ? AND external_id = ?", (SOURCE, external_id))
            report.removed += 1
    if report.invalid:
        logger.warning("%d annotations had results the labelling config cannot produce", len(report.invalid))
    return report


def _store_vote(db, annotation: AnnotationRecord, pair: PairRow, external_id: str, previous, report: PullReport) -> None:
    outcome = outcome_for(annotation.choice, pair.left_side)
    if previous is None:
        db.execute(
            "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (pair.pair_id, annotation.annotator, outcome, pair.left_side, SOURCE, external_id,
             annotation.created_at, annotation.updated_at),
        )
        report.added += 1
    elif previous != (outcome, annotation.updated_at, annotation.annotator):
        db.execute(
            "UPDATE votes SET outcome = ?, updated_at = ?, annotator = ? WHERE source = ? AND external_id = ?",
            (outcome, annotation.updated_at, annotation.annotator, SOURCE, external_id),
        )
        report.updated += 1
    else:
        report.unchanged += 1
