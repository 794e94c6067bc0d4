"""Move pairs to Label Studio as tasks and bring the annotators' votes back into the store.

The side each response is shown on is decided when the pair is selected (`pairs.left_side`), so a
pulled "left" or "right" maps back to response a or b whatever the server shows.

Pulls are incremental. The table ``labelstudio_annotations`` records every annotation seen per project
(as a vote, an invalid result, a superseded vote or an annotation of a task prefscout did not create).
A pull reads only the tasks the server changed since the previous pull. It then compares the project's
annotation count with that record, which finds the deletions that change times miss: a deleted task
takes its annotations along.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from connectors.labelstudio.client import AnnotationRecord, LabelStudioClient, PairTask, TaskAnnotations
from connectors.labelstudio.labeling import display_text
from connectors.labelstudio.server import read_credentials, server_exit_reason, server_status
from engine.errors import ConfigError, LabelStudioError
from engine.store import PairRow, Store, utc_now
from engine.workspace import LabelStudioSettings, Workspace

logger = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"
SOURCE = "labelstudio"

# A pull reads again the tasks changed during this long before the previous pull started. An annotation
# saved while that pull ran carries the time its save began, which can precede the pull's start, and
# the server's Date header has whole seconds. Saves take well under a second.
PULL_OVERLAP = timedelta(seconds=10)
# Above this many tasks whose annotation count differs from the record, a full pull is cheaper than
# reading each task on its own.
_MAX_TASKS_READ_ONE_BY_ONE = 200

_SYNC_SCHEMA = """
CREATE TABLE IF NOT EXISTS labelstudio_annotations (
    project_key TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('vote', 'invalid', 'superseded', 'unknown_task')),
    detail TEXT,
    PRIMARY KEY (project_key, annotation_id)
);
CREATE INDEX IF NOT EXISTS labelstudio_annotations_by_task ON labelstudio_annotations (project_key, task_id);
"""


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str = field(repr=False)
    local: bool  # the workspace's own managed server
    state_dir: Path | None = None  # the managed server's state dir when `local`

    @property
    def server_key(self) -> str:
        """Name of the server in stored ids: "local" for the workspace's own server, else its URL.

        The local server may come back on another port after a restart. Its data dir, projects and
        tasks stay the same, so its ids must not depend on the URL.
        """
        return "local" if self.local else self.url


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
    if status["error"] is not None:
        raise LabelStudioError(status["error"])
    credentials = read_credentials(workspace.labelstudio_dir)
    if not status["running"] or credentials is None:
        raise LabelStudioError(
            f"no Label Studio server is running for workspace {workspace.root}; start one with "
            f"`prefscout labelstudio start`, or set {URL_ENV} and {API_KEY_ENV} for a remote server"
        )
    return Connection(
        url=status["url"], api_key=credentials["api_key"], local=True, state_dir=workspace.labelstudio_dir
    )


@dataclass
class Project:
    client: LabelStudioClient
    project_id: int
    key: str  # "<url>#<project id>", stored with each pushed pair
    settings: LabelStudioSettings = field(default_factory=LabelStudioSettings)


def make_client(connection: Connection, settings: LabelStudioSettings) -> LabelStudioClient:
    """Build a client with the workspace's timeout and retry settings."""
    state_dir = connection.state_dir
    return LabelStudioClient(
        connection.url,
        connection.api_key,
        timeout=settings.timeout_seconds,
        retries=settings.retries,
        backoff=settings.backoff_seconds,
        server_alive=(lambda: server_exit_reason(state_dir)) if state_dir is not None else None,
    )


def project_meta_key(url: str) -> str:
    return f"labelstudio_project:{url}"


def open_project(workspace: Workspace, store: Store, connection: Connection) -> Project:
    """Connect and return the workspace's project on that server, creating it on first use."""
    settings = workspace.load_config().labelstudio
    client = make_client(connection, settings)
    client.check()
    meta_key = project_meta_key(connection.server_key)
    stored = store.get_meta(meta_key)
    project_id = client.ensure_project(
        int(stored) if stored else None,
        title=settings.project_title,
        maximum_annotations=settings.maximum_annotations,
        instructions=settings.instructions,
    )
    if stored != str(project_id):
        store.set_meta(meta_key, str(project_id))
    return Project(client=client, project_id=project_id, key=f"{connection.server_key}#{project_id}", settings=settings)


# ---- push


def _forget_deleted_tasks(store: Store, project: Project) -> int:
    """Clear the task id of pairs whose task no longer exists in the project; return how many."""
    recorded = store.execute(
        "SELECT pair_id, task_id FROM pairs WHERE project_key = ? AND task_id IS NOT NULL", (project.key,)
    ).fetchall()
    if not recorded:
        return 0
    on_server = set(project.client.task_ids(project.project_id).values())
    gone = [row["pair_id"] for row in recorded if row["task_id"] not in on_server]
    if gone:
        logger.warning("%d tasks of project %s were deleted on the server; pushing their pairs again", len(gone), project.key)
        with store.transaction() as db:
            db.executemany("UPDATE pairs SET task_id = NULL, pushed_at = NULL WHERE pair_id = ?", [(pair_id,) for pair_id in gone])
    return len(gone)


def push_pending(workspace: Workspace, store: Store, project: Project, *, batch_size: int | None = None) -> int:
    """Push every selected pair that has no task in this project yet; return how many got a task.

    Each batch's task ids are stored as soon as the server returns them, so an interrupted push keeps
    what it did, and the next push looks up the remaining pairs on the server before importing them.
    A pair whose task was deleted on the server gets a new task.
    """
    _forget_deleted_tasks(store, project)
    rows = store.execute(
        "SELECT pair_id FROM pairs WHERE task_id IS NULL OR project_key IS NOT ? ORDER BY round_id, rank",
        (project.key,),
    ).fetchall()
    pending = store.pairs(row["pair_id"] for row in rows)
    if not pending:
        return 0
    ordered = [pending[row["pair_id"]] for row in rows]
    tasks = build_tasks(store, ordered, max_display_chars=project.settings.max_display_chars)

    recorded = 0

    def record(task_ids: dict[str, int]) -> None:
        nonlocal recorded
        pushed_at = utc_now()
        with store.transaction() as db:
            db.executemany(
                "UPDATE pairs SET task_id = ?, project_key = ?, pushed_at = ? WHERE pair_id = ?",
                [(task_id, project.key, pushed_at, pair_id) for pair_id, task_id in task_ids.items()],
            )
        recorded += len(task_ids)

    project.client.push(
        project.project_id, tasks, batch_size=batch_size or project.settings.batch_size, on_batch=record
    )
    logger.info("pushed %d tasks to project %s", recorded, project.key)
    return recorded


def build_tasks(store: Store, pairs: list[PairRow], *, max_display_chars: int | None = None) -> list[PairTask]:
    """Build the task of each pair with its texts in display order, each cut to `max_display_chars`."""
    rows = {row for pair in pairs for row in (pair.response_a, pair.response_b)}
    texts = {response.row: response.text for response in store.responses(rows)}
    prompts = store.prompt_texts()
    tasks = []
    for pair in pairs:
        left, right = pair.response_a, pair.response_b
        if pair.left_side == "b":
            left, right = right, left
        tasks.append(
            PairTask(
                pair_id=pair.pair_id,
                prompt=display_text(prompts[pair.prompt_row][1], max_display_chars),
                left=display_text(texts[left], max_display_chars),
                right=display_text(texts[right], max_display_chars),
            )
        )
    return tasks


# ---- pull


@dataclass
class PullReport:
    mode: str = "full"  # "full": every annotated task read; "incremental": tasks changed since the last pull
    tasks_read: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    superseded: int = 0  # earlier annotations of an annotator who annotated the same task again
    unknown_tasks: int = 0  # annotations of tasks that no prefscout pair matches
    invalid: list[str] = field(default_factory=list)  # invalid results among the annotations read
    recounted_tasks: int = 0  # tasks read again because their annotation count differed from the record


def outcome_for(choice: str, left_side: str) -> str:
    """Map a Label Studio choice (left, right, tie, both_bad, skip) to a vote outcome (a, b, ...)."""
    if choice == "left":
        return left_side
    if choice == "right":
        return "b" if left_side == "a" else "a"
    return choice


def pull_votes(store: Store, project: Project, *, full: bool = False) -> PullReport:
    """Bring the project's annotations into the store as votes.

    Only tasks changed since the previous pull are read, unless `full` or this is the project's first
    pull. An updated annotation replaces its vote, a deleted one removes it, a cancelled one is a skip,
    and drafts are never read. When one annotator has several annotations on a task, the most recently
    updated one is the vote. Results the labelling config cannot produce are listed in the report and
    recorded, never stored as votes.
    """
    store.connection.executescript(_SYNC_SCHEMA)
    watermark_key = f"labelstudio_pull:{project.key}"
    previous = store.get_meta(watermark_key)
    started = project.client.server_time()

    incremental = previous is not None and not full
    updated_after = datetime.fromisoformat(previous) if incremental else None
    tasks = list(project.client.annotated_tasks(project.project_id, updated_after=updated_after))
    report = PullReport(mode="incremental" if incremental else "full", tasks_read=len(tasks))
    _apply_tasks(store, project, tasks, report, full=not incremental)

    server_count = project.client.counts(project.project_id)["annotations"]
    recorded_count = store.count("SELECT COUNT(*) FROM labelstudio_annotations WHERE project_key = ?", (project.key,))
    if server_count != recorded_count:
        logger.info(
            "Project %s has %d annotations and the record %d; comparing per task",
            project.key, server_count, recorded_count,
        )
        _recount(store, project, report)

    watermark = (started or _latest_update(tasks) or datetime.now(timezone.utc)) - PULL_OVERLAP
    if previous is not None and incremental:
        watermark = max(watermark, datetime.fromisoformat(previous))
    store.set_meta(watermark_key, watermark.isoformat())

    if report.invalid:
        logger.info("%d annotations had results the labelling config cannot produce", len(report.invalid))
    logger.info(
        "%s pull of %s: %d tasks read, %d votes added, %d updated, %d removed",
        report.mode, project.key, report.tasks_read, report.added, report.updated, report.removed,
    )
    return report


def _apply_tasks(store: Store, project: Project, tasks: list[TaskAnnotations], report: PullReport, *, full: bool) -> None:
    """Reconcile the record and the votes with `tasks`; with `full`, tasks not among them have no annotations."""
    parsed = [(task, *project.client.parse_annotations(task)) for task in tasks]
    pairs = store.pairs()
    with store.transaction() as db:
        for task, records, invalid in parsed:
            _sync_task(db, project.key, task, records, invalid, pairs.get(task.pair_id or ""), report)
        if full:
            read = {task.task_id for task in tasks}
            stale = [
                row["task_id"]
                for row in db.execute(
                    "SELECT DISTINCT task_id FROM labelstudio_annotations WHERE project_key = ?", (project.key,)
                )
                if row["task_id"] not in read
            ]
            for task_id in stale:
                _remove_annotations(db, project.key, task_id, keep=(), report=report)
            _remove_unrecorded_votes(db, project.key, report)


def _recount(store: Store, project: Project, report: PullReport) -> None:
    """Read again each task whose annotation count on the server differs from the record."""
    server = project.client.annotation_counts(project.project_id)
    recorded = {
        row["task_id"]: row["n"]
        for row in store.execute(
            "SELECT task_id, COUNT(*) AS n FROM labelstudio_annotations WHERE project_key = ? GROUP BY task_id",
            (project.key,),
        )
    }
    differing = sorted(
        task_id for task_id in server.keys() | recorded.keys() if server.get(task_id, 0) != recorded.get(task_id, 0)
    )
    report.recounted_tasks += len(differing)
    if len(differing) > _MAX_TASKS_READ_ONE_BY_ONE:
        tasks = list(project.client.annotated_tasks(project.project_id))
        report.tasks_read += len(tasks)
        _apply_tasks(store, project, tasks, report, full=True)
        return

    tasks = []
    for task_id in differing:
        task = project.client.task_annotations(task_id)
        # A deleted task has no annotations left.
        tasks.append(task or TaskAnnotations(task_id=task_id, pair_id=None, updated_at="", annotations=[]))
    report.tasks_read += len(tasks)
    _apply_tasks(store, project, tasks, report, full=False)


def _sync_task(
    db: sqlite3.Connection,
    project_key: str,
    task: TaskAnnotations,
    records: list[AnnotationRecord],
    invalid: list[tuple[int, str]],
    pair: PairRow | None,
    report: PullReport,
) -> None:
    """Make the record and the votes of one task match the annotations the server returned for it."""
    present = [record.annotation_id for record in records] + [annotation_id for annotation_id, _ in invalid]
    _remove_annotations(db, project_key, task.task_id, keep=present, report=report)

    if pair is None:
        for annotation_id in present:
            _record(db, project_key, annotation_id, task.task_id, "unknown_task", None)
        report.unknown_tasks += len(present)
        return

    for annotation_id, reason in invalid:
        _delete_vote(db, project_key, annotation_id, report)
        _record(db, project_key, annotation_id, task.task_id, "invalid", reason)
        report.invalid.append(f"annotation {annotation_id} on task {task.task_id} (pair {pair.pair_id!r}): {reason}")

    latest: dict[str, AnnotationRecord] = {}
    for record in sorted(records, key=lambda item: (item.updated_at, item.annotation_id)):
        latest[record.annotator] = record
    for record in records:
        if latest[record.annotator] is record:
            _store_vote(db, record, pair, f"{project_key}/{record.annotation_id}", report)
            _record(db, project_key, record.annotation_id, task.task_id, "vote", None)
        else:
            _delete_vote(db, project_key, record.annotation_id, report)
            _record(db, project_key, record.annotation_id, task.task_id, "superseded", None)
            report.superseded += 1


def _record(db: sqlite3.Connection, project_key: str, annotation_id: int, task_id: int, state: str, detail: str | None) -> None:
    db.execute(
        "INSERT INTO labelstudio_annotations (project_key, annotation_id, task_id, state, detail) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_key, annotation_id) "
        "DO UPDATE SET task_id = excluded.task_id, state = excluded.state, detail = excluded.detail",
        (project_key, annotation_id, task_id, state, detail),
    )


def _remove_annotations(
    db: sqlite3.Connection, project_key: str, task_id: int, *, keep: Iterable[int], report: PullReport
) -> None:
    """Forget the annotations of a task that the server no longer has, and remove their votes."""
    kept = set(keep)
    gone = [
        row["annotation_id"]
        for row in db.execute(
            "SELECT annotation_id FROM labelstudio_annotations WHERE project_key = ? AND task_id = ?",
            (project_key, task_id),
        )
        if row["annotation_id"] not in kept
    ]
    for annotation_id in gone:
        _delete_vote(db, project_key, annotation_id, report)
        db.execute(
            "DELETE FROM labelstudio_annotations WHERE project_key = ? AND annotation_id = ?", (project_key, annotation_id)
        )


def _remove_unrecorded_votes(db: sqlite3.Connection, project_key: str, report: PullReport) -> None:
    """Remove this project's votes that no recorded annotation backs, such as votes of pulls before the record existed."""
    prefix = f"{project_key}/"
    backed = {
        f"{prefix}{row['annotation_id']}"
        for row in db.execute(
            "SELECT annotation_id FROM labelstudio_annotations WHERE project_key = ? AND state = 'vote'", (project_key,)
        )
    }
    votes = db.execute(
        "SELECT external_id FROM votes WHERE source = ? AND substr(external_id, 1, ?) = ?",
        (SOURCE, len(prefix), prefix),
    ).fetchall()
    for row in votes:
        if row["external_id"] not in backed:
            db.execute("DELETE FROM votes WHERE source = ? AND external_id = ?", (SOURCE, row["external_id"]))
            report.removed += 1


def _delete_vote(db: sqlite3.Connection, project_key: str, annotation_id: int, report: PullReport) -> None:
    deleted = db.execute(
        "DELETE FROM votes WHERE source = ? AND external_id = ?", (SOURCE, f"{project_key}/{annotation_id}")
    ).rowcount
    report.removed += deleted


def _store_vote(db: sqlite3.Connection, annotation: AnnotationRecord, pair: PairRow, external_id: str, report: PullReport) -> None:
    outcome = outcome_for(annotation.choice, pair.left_side)
    previous = db.execute(
        "SELECT outcome, updated_at, annotator FROM votes WHERE source = ? AND external_id = ?", (SOURCE, external_id)
    ).fetchone()
    if previous is None:
        db.execute(
            "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (pair.pair_id, annotation.annotator, outcome, pair.left_side, SOURCE, external_id,
             annotation.created_at, annotation.updated_at),
        )
        report.added += 1
    elif tuple(previous) != (outcome, annotation.updated_at, annotation.annotator):
        db.execute(
            "UPDATE votes SET outcome = ?, updated_at = ?, annotator = ? WHERE source = ? AND external_id = ?",
            (outcome, annotation.updated_at, annotation.annotator, SOURCE, external_id),
        )
        report.updated += 1
    else:
        report.unchanged += 1


def _latest_update(tasks: list[TaskAnnotations]) -> datetime | None:
    times = []
    for task in tasks:
        try:
            times.append(datetime.fromisoformat(task.updated_at.replace("Z", "+00:00")))
        except ValueError:
            continue
    return max(times, default=None)


def sync_counts(store: Store, project_key: str) -> dict[str, int]:
    """Count the recorded annotations of a project by state (vote, invalid, superseded, unknown_task)."""
    try:
        rows = store.execute(
            "SELECT state, COUNT(*) AS n FROM labelstudio_annotations WHERE project_key = ? GROUP BY state",
            (project_key,),
        ).fetchall()
    except sqlite3.OperationalError:
        return {}  # no pull has created the table yet
    return {row["state"]: row["n"] for row in rows}
