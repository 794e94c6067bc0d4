"""Push pairs to a Label Studio project as pairwise tasks and read the annotations back.

The client works on plain data (`PairTask` in, task pages and `AnnotationRecord` out) and does not use
the prefscout store. It talks to the REST API with `requests` rather than label-studio-sdk, because the
calls it needs (``return_task_ids`` on import, Data Manager filters and ``include`` to trim task pages)
are plain query parameters there. Facts about the API were measured on label-studio 1.23.2.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from connectors.labelstudio.labeling import (
    CHOICES,
    PAIRWISE_CONTROL,
    PROMPT_OBJECT,
    SIDES,
    TASK_FIELDS,
    VERDICT_CHOICES,
    VERDICT_CONTROL,
    Choice,
    PairTask,
    annotation_for_choice,
    is_pairwise_config,
    labeling_config,
    parse_result,
)
from engine.errors import InputError, LabelStudioError

__all__ = [
    "CHOICES", "PAIRWISE_CONTROL", "PROMPT_OBJECT", "SIDES", "TASK_FIELDS", "VERDICT_CHOICES", "VERDICT_CONTROL",
    "AnnotationRecord", "Choice", "LabelStudioClient", "PairTask", "PullResult", "TaskAnnotations",
    "annotation_for_choice", "labeling_config", "parse_result",
]

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000
# Responses worth another attempt: the server or a proxy in front of it was briefly unavailable.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_TASK_PAGE_FIELDS = "id,data,is_labeled"
# With ``fields=all``, ``include`` also trims the nested annotations to these keys. Reading 10k tasks
# with one annotation each took 14.6 s this way against 36.8 s for the untrimmed pages (label-studio
# 1.23.2, 2 cores).
_ANNOTATION_PAGE_FIELDS = "id,data,updated_at,annotations,result,was_cancelled,completed_by,created_at"
_COUNT_PAGE_FIELDS = "id,total_annotations,cancelled_annotations"
# The Data Manager parses datetime filter values with exactly this format.
_FILTER_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Pair id lookups put a regular expression in the query string. Proxies commonly reject request lines
# over 8 KiB, so each expression stays well below that.
_LOOKUP_PATTERN_CHARS = 3000
# A pair id lookup scans the project once per expression, so above this many expressions one listing of
# all tasks is cheaper.
_LOOKUP_MAX_QUERIES = 8
# Import requests stay below this size whatever the batch size, so that batches of very long texts
# remain far from Label Studio's upload limit (250 MB by default in 1.23.2) and the limits of proxies.
MAX_IMPORT_BYTES = 16 * 1024 * 1024
# Label Studio requires a project title of 3 to 50 characters.
_TITLE_LENGTH = (3, 50)


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotator's submitted annotation of one task, reduced to a choice."""

    annotation_id: int
    task_id: int
    pair_id: str
    annotator: str  # the annotator's email, or the user id as a string when the user is unknown
    choice: Choice
    created_at: str
    updated_at: str


@dataclass
class PullResult:
    """Annotations read from a project, and one message per annotation that the config cannot produce."""

    annotations: list[AnnotationRecord]
    invalid: list[str]


@dataclass(frozen=True)
class TaskAnnotations:
    """A task as read back: its id, its ``pair_id`` (None on tasks prefscout did not create), its
    last update time on the server, and its submitted and cancelled annotations as the server sends them."""

    task_id: int
    pair_id: str | None
    updated_at: str
    annotations: list[dict[str, Any]]


class _TransientError(LabelStudioError):
    """A failure that another attempt may not meet: a timeout, a lost connection, a 429 or 5xx status."""


class LabelStudioClient:
    """A Label Studio REST client authenticated with a legacy API token or a Personal Access Token.

    Reads (GET) and updates (PATCH) are retried on timeouts, lost connections and 429 or 5xx statuses,
    `retries` times, waiting `backoff` seconds and twice as long before each next attempt. Imports are
    retried by `push`, which checks the server for the batch first. Other POSTs are sent once.
    `server_alive`, when given, is asked before each retry, so that a server that exited is reported at
    once instead of being retried.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        page_size: int = DEFAULT_PAGE_SIZE,
        server_alive: Callable[[], str | None] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"invalid Label Studio URL {url!r}; expected http://host:port")
        if not api_key:
            raise InputError("missing Label Studio API key; pass the admin token from credentials.json")
        if retries < 0 or backoff < 0:
            raise InputError(f"invalid retries {retries} or backoff {backoff}; expected 0 or more")
        if page_size < 1:
            raise InputError(f"invalid page_size {page_size}; expected 1 or more")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.page_size = page_size
        self._server_alive = server_alive
        self._api_key = api_key
        self._session = requests.Session()
        self._users: dict[int, str] = {}
        # A Personal Access Token is a JWT (three dot-separated parts). It is exchanged for an access
        # token that expires after 5 minutes. A legacy token is sent as it is.
        self.token_kind = "Personal Access Token" if api_key.count(".") == 2 else "legacy API token"
        if self.token_kind == "legacy API token":
            self._session.headers["Authorization"] = f"Token {api_key}"

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token_kind={self.token_kind!r})"

    # ---- server and project

    def check(self) -> str:
        """Return the server's version string after checking that the API key is accepted."""
        self._request("GET", "/api/current-user/whoami")
        version = self._request("GET", "/api/version").json()
        return str(version.get("release", "unknown"))

    def ensure_project(
        self,
        project_id: int | None,
        *,
        title: str,
        maximum_annotations: int = 1,
        instructions: str = "",
    ) -> int:
        """Return the id of a pairwise project, creating it when `project_id` is None.

        An existing project must use this connector's labelling config (any instructions). Its maximum
        number of annotations per task, its instructions and its config are updated when they differ.
        """
        if maximum_annotations < 1:
            raise InputError(f"invalid maximum_annotations {maximum_annotations}; expected 1 or more")
        settings = {
            "maximum_annotations": maximum_annotations,
            "expert_instruction": instructions,
            "show_instruction": bool(instructions),
            "label_config": labeling_config(instructions),
        }

        if project_id is None:
            low, high = _TITLE_LENGTH
            if not low <= len(title) <= high:
                raise InputError(f"invalid project title {title!r}; expected {low} to {high} characters")
            created = self._request("POST", "/api/projects", json={"title": title, **settings}).json()
            logger.info("Created Label Studio project %d (%r)", created["id"], title)
            return int(created["id"])

        response = self._request("GET", f"/api/projects/{project_id}", allow_not_found=True)
        if response.status_code == 404:
            raise LabelStudioError(
                f"Label Studio project {project_id} not found at {self.url}; pass None to create a project"
            )
        project = response.json()
        if not is_pairwise_config(project.get("label_config", "")):
            raise LabelStudioError(
                f"Label Studio project {project_id} at {self.url} does not use the prefscout labelling "
                "config; pass another project id, or none to create a project"
            )
        changed = {name: value for name, value in settings.items() if project.get(name) != value}
        if changed:
            self._request("PATCH", f"/api/projects/{project_id}", json=changed)
            logger.info("Updated Label Studio project %d: %s", project_id, ", ".join(sorted(changed)))
        return int(project_id)

    def counts(self, project_id: int) -> dict:
        """Count a project's tasks and annotations.

        Keys: ``tasks``, ``annotations`` (submitted, skips included), ``skipped``, ``tasks_with_annotations``
        and ``finished_tasks`` (tasks that reached the maximum number of annotations).
        """
        project = self._request("GET", f"/api/projects/{project_id}").json()
        submitted = int(project.get("total_annotations_number") or 0)
        skipped = int(project.get("skipped_annotations_number") or 0)
        return {
            "tasks": int(project.get("task_number") or 0),
            "annotations": submitted + skipped,
            "skipped": skipped,
            "tasks_with_annotations": int(project.get("num_tasks_with_annotations") or 0),
            "finished_tasks": int(project.get("finished_task_number") or 0),
        }

    def server_time(self) -> datetime | None:
        """Return the server's clock (from the HTTP ``Date`` header, whole seconds), or None without one."""
        response = self._request("GET", "/api/version")
        try:
            return parsedate_to_datetime(response.headers["Date"]).astimezone(timezone.utc)
        except (KeyError, TypeError, ValueError):
            return None

    # ---- tasks

    def push(
        self,
        project_id: int,
        tasks: Sequence[PairTask],
        *,
        batch_size: int = 1000,
        on_batch: Callable[[dict[str, int]], None] | None = None,
    ) -> dict[str, int]:
        """Import `tasks` that the project does not have yet; return pair_id -> task_id for all of them.

        A pair already on the server (same ``data.pair_id``) is not imported again, because Label Studio
        does not deduplicate imports. Tasks go in batches of at most `batch_size` tasks and about
        `MAX_IMPORT_BYTES` of text. A batch that fails with a
        timeout, a lost connection or a 5xx status is retried. Before each retry the client looks up
        which of the batch's pairs the server created anyway, so a batch that the server accepted
        without the response arriving is not imported twice. `on_batch` receives the ids of each batch (and
        first those of the pairs found on the server) as soon as they are known, so a caller can record
        them before the next batch. Two concurrent pushes of one pair can still both import it.
        """
        if batch_size < 1:
            raise InputError(f"invalid batch_size {batch_size}; expected 1 or more")
        _validate_tasks(tasks)

        started = time.monotonic()
        result = self.find_tasks(project_id, [task.pair_id for task in tasks])
        if result and on_batch is not None:
            on_batch(dict(result))
        new_tasks = [task for task in tasks if task.pair_id not in result]

        for batch in _batches(new_tasks, batch_size, MAX_IMPORT_BYTES):
            created = self._import_once(project_id, batch)
            result.update(created)
            if on_batch is not None:
                on_batch(created)
        logger.info(
            "Pushed %d new tasks to project %d in %.1f s (%d already there)",
            len(new_tasks), project_id, time.monotonic() - started, len(tasks) - len(new_tasks),
        )
        return result

    def find_tasks(self, project_id: int, pair_ids: Iterable[str]) -> dict[str, int]:
        """Map each of `pair_ids` that has a task in the project to its task id.

        Small lookups use Data Manager regex filters on ``data.pair_id``; large ones list every task.
        NOTE: the regex filter was tested on Label Studio's SQLite backend only; a PostgreSQL server
        applies its own regex dialect, which `re.escape` output should also suit.
        """
        wanted = set(pair_ids)
        if not wanted:
            return {}
        if self.counts(project_id)["tasks"] == 0:
            return {}

        patterns = _pair_id_patterns(sorted(wanted))
        if len(patterns) > _LOOKUP_MAX_QUERIES:
            return {pair_id: task_id for pair_id, task_id in self.task_ids(project_id).items() if pair_id in wanted}

        found: dict[str, int] = {}
        for pattern in patterns:
            item = {"filter": "filter:tasks:data.pair_id", "operator": "regex", "type": "String", "value": pattern}
            query = json.dumps({"filters": {"conjunction": "and", "items": [item]}})
            for task in self._iter_pages(project_id, include=_TASK_PAGE_FIELDS, query=query):
                pair_id = task.get("data", {}).get("pair_id")
                # The regex only narrows the search; an exact comparison decides.
                if pair_id in wanted:
                    found[pair_id] = min(int(task["id"]), found.get(pair_id, int(task["id"])))
        return found

    def task_ids(self, project_id: int) -> dict[str, int]:
        """Map pair_id -> task_id for every task of the project that has a ``pair_id``.

        When a pair has several tasks (two concurrent pushes, or a manual import), the lowest id wins.
        """
        mapping: dict[str, int] = {}
        for task in self._iter_pages(project_id, include=_TASK_PAGE_FIELDS):
            pair_id = task.get("data", {}).get("pair_id")
            if not isinstance(pair_id, str):
                continue
            task_id = int(task["id"])
            if pair_id in mapping:
                logger.warning("Pair %s has several tasks in project %d (%d and %d)",
                               pair_id, project_id, mapping[pair_id], task_id)
                task_id = min(task_id, mapping[pair_id])
            mapping[pair_id] = task_id
        return mapping

    def open_tasks(self, project_id: int) -> list[tuple[int, str]]:
        """List (task_id, pair_id) of the tasks with fewer annotations than the project maximum.

        Label Studio does not count skips (cancelled annotations) towards that maximum.
        """
        return [
            (int(task["id"]), task["data"]["pair_id"])
            for task in self._iter_pages(project_id, include=_TASK_PAGE_FIELDS)
            if not task.get("is_labeled") and isinstance(task.get("data", {}).get("pair_id"), str)
        ]

    def _import_once(self, project_id: int, batch: Sequence[PairTask]) -> dict[str, int]:
        """Import `batch`, retrying transient failures without creating any task twice."""
        pending = list(batch)
        created: dict[str, int] = {}
        for attempt in range(self.retries + 1):
            try:
                created.update(self._import_batch(project_id, pending))
                return created
            except _TransientError as error:
                if attempt == self.retries:
                    raise LabelStudioError(
                        f"import of {len(pending)} tasks into project {project_id} failed after "
                        f"{attempt + 1} attempts: {error}. Run the push again once the server responds: "
                        "it checks the server first, so no task is created twice"
                    ) from error
                self._wait_before_retry(error, attempt, f"import of {len(pending)} tasks")

            found = self.find_tasks(project_id, [task.pair_id for task in pending])
            if found:
                logger.warning(
                    "The server had created %d of the %d tasks of the failed import into project %d; "
                    "importing only the %d others", len(found), len(pending), project_id, len(pending) - len(found),
                )
            created.update(found)
            pending = [task for task in pending if task.pair_id not in found]
            if not pending:
                return created
        return created

    def _import_batch(self, project_id: int, batch: Sequence[PairTask]) -> dict[str, int]:
        body = [{"data": {field: getattr(task, field) for field in TASK_FIELDS}} for task in batch]
        response = self._request(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=body,
            retry=False,
        ).json()
        created = response.get("task_ids")
        if not isinstance(created, list) or len(created) != len(batch):
            raise LabelStudioError(
                f"Label Studio import into project {project_id} returned {created!r} task ids for "
                f"{len(batch)} tasks; check the project with task_ids() before pushing again"
            )
        # Label Studio 1.23.2 returns the ids in the order of the imported list.
        return {task.pair_id: int(task_id) for task, task_id in zip(batch, created)}

    # ---- annotations

    def annotated_tasks(self, project_id: int, *, updated_after: datetime | None = None) -> Iterator[TaskAnnotations]:
        """Yield tasks with their submitted and cancelled annotations (drafts are never included).

        Without `updated_after`: every task that has at least one annotation. With it: every task the
        server changed after that time, annotated or not. Creating, updating and deleting an annotation
        through the API all set the task's ``updated_at`` (label-studio 1.23.2), so this finds
        deletions too. Tasks come in id order, paged by id, so tasks that change during the read
        do not shift the pages.
        """
        if updated_after is None:
            # Two passes, because Data Manager filters combine with one conjunction for all items.
            passes = [
                [_number_filter("total_annotations", "greater", 0)],
                [_number_filter("total_annotations", "equal", 0), _number_filter("cancelled_annotations", "greater", 0)],
            ]
        else:
            since = updated_after.astimezone(timezone.utc).strftime(_FILTER_TIME_FORMAT)
            passes = [[{"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": since}]]

        for filters in passes:
            for task in self._iter_by_id(project_id, filters, fields="all", include=_ANNOTATION_PAGE_FIELDS):
                yield _task_annotations(task)

    def task_annotations(self, task_id: int) -> TaskAnnotations | None:
        """Read one task with its annotations; None when the task does not exist."""
        response = self._request("GET", f"/api/tasks/{task_id}", allow_not_found=True)
        if response.status_code == 404:
            return None
        return _task_annotations(response.json())

    def annotation_counts(self, project_id: int) -> dict[int, int]:
        """Map task id -> number of submitted and cancelled annotations, for every task of the project."""
        return {
            int(task["id"]): int(task.get("total_annotations") or 0) + int(task.get("cancelled_annotations") or 0)
            for task in self._iter_by_id(project_id, [], include=_COUNT_PAGE_FIELDS)
        }

    def parse_annotations(self, task: TaskAnnotations) -> tuple[list[AnnotationRecord], list[tuple[int, str]]]:
        """Reduce a task's annotations to records, and list (annotation id, reason) of the invalid ones."""
        records: list[AnnotationRecord] = []
        invalid: list[tuple[int, str]] = []
        for annotation in task.annotations:
            annotation_id = int(annotation["id"])
            outcome = parse_result(annotation.get("result"), bool(annotation.get("was_cancelled")))
            if outcome not in CHOICES:
                invalid.append((annotation_id, outcome))
                continue
            records.append(
                AnnotationRecord(
                    annotation_id=annotation_id,
                    task_id=task.task_id,
                    pair_id=task.pair_id or "",
                    annotator=self._annotator_name(annotation.get("completed_by")),
                    choice=outcome,  # type: ignore[arg-type]
                    created_at=str(annotation.get("created_at", "")),
                    updated_at=str(annotation.get("updated_at", "")),
                )
            )
        return records, invalid

    def pull(self, project_id: int) -> PullResult:
        """Read every submitted annotation of every annotator, skips included and drafts excluded."""
        annotations: list[AnnotationRecord] = []
        invalid: list[str] = []
        for task in self.annotated_tasks(project_id):
            if task.pair_id is None:
                continue
            records, rejected = self.parse_annotations(task)
            annotations.extend(records)
            invalid.extend(
                f"annotation {annotation_id} on task {task.task_id} (pair {task.pair_id!r}): {reason}"
                for annotation_id, reason in rejected
            )

        if invalid:
            logger.warning("%d annotations in project %d have invalid results", len(invalid), project_id)
        logger.info("Pulled %d annotations from project %d", len(annotations), project_id)
        return PullResult(annotations=annotations, invalid=invalid)

    def raw_annotations(self, project_id: int) -> list[dict[str, Any]]:
        """Return every annotation of the project as the server sends it, with ``task`` and ``pair_id`` added.

        Tasks without a ``pair_id`` are ignored.
        """
        return [
            {**annotation, "task": task.task_id, "pair_id": task.pair_id}
            for task in self.annotated_tasks(project_id)
            if task.pair_id is not None
            for annotation in task.annotations
        ]

    def create_annotation(self, task_id: int, choice: Choice, *, completed_by: int) -> int:
        """Submit `choice` on a task as the user `completed_by`; return the annotation id.

        A "skip" becomes a cancelled annotation, as the skip button makes it.
        """
        result, was_cancelled = annotation_for_choice(choice)
        body = {"result": result, "was_cancelled": was_cancelled, "completed_by": completed_by}
        created = self._request("POST", f"/api/tasks/{task_id}/annotations", json=body).json()
        return int(created["id"])

    # ---- users

    def users(self, *, refresh: bool = False) -> dict[int, str]:
        """Map user id -> email for the organisation's users (cached; `refresh` reloads the cache)."""
        if refresh or not self._users:
            listed = self._request("GET", "/api/users").json()
            self._users = {int(user["id"]): str(user.get("email") or user["id"]) for user in listed}
        return dict(self._users)

    def create_user(self, email: str) -> int:
        """Create a user in the organisation and return its id."""
        created = self._request("POST", "/api/users", json={"email": email, "username": email}).json()
        self._users[int(created["id"])] = email
        logger.info("Created Label Studio user %d (%s)", created["id"], email)
        return int(created["id"])

    def _annotator_name(self, completed_by: Any) -> str:
        if isinstance(completed_by, dict):
            if completed_by.get("email"):
                return str(completed_by["email"])
            completed_by = completed_by.get("id")
        if not isinstance(completed_by, int):
            return str(completed_by)
        if completed_by not in self._users:
            self.users(refresh=True)
        return self._users.get(completed_by, str(completed_by))

    # ---- HTTP

    def _iter_pages(self, project_id: int, **params: str) -> Iterator[dict[str, Any]]:
        """Yield the project's tasks page by page; Label Studio ends the pager with a 404 "Invalid page"."""
        page = 1
        while True:
            query = {"project": project_id, "page": page, "page_size": self.page_size, **params}
            response = self._request("GET", "/api/tasks", params=query, allow_not_found=True)
            if response.status_code == 404:
                return
            tasks = response.json().get("tasks", [])
            yield from tasks
            if len(tasks) < self.page_size:
                return
            page += 1

    def _iter_by_id(self, project_id: int, filters: list[dict[str, Any]], **params: str) -> Iterator[dict[str, Any]]:
        """Yield the project's tasks that match all `filters`, in id order, one page after the last id seen."""
        last_id = 0
        while True:
            items = [*filters, _number_filter("id", "greater", last_id)]
            query = json.dumps({"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]})
            page = {"project": project_id, "page": 1, "page_size": self.page_size, "query": query, **params}
            response = self._request("GET", "/api/tasks", params=page, allow_not_found=True)
            if response.status_code == 404:
                return
            tasks = response.json().get("tasks", [])
            yield from tasks
            if len(tasks) < self.page_size:
                return
            last_id = int(tasks[-1]["id"])

    def _request(
        self, method: str, path: str, *, allow_not_found: bool = False, retry: bool | None = None, **kwargs: Any
    ) -> requests.Response:
        """Send one API request, retrying transient failures of reads and updates.

        Raises LabelStudioError on an error status, or when the server stays unreachable.
        """
        if retry is None:
            retry = method in ("GET", "PATCH", "PUT", "DELETE")
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return self._request_once(method, path, allow_not_found=allow_not_found, **kwargs)
            except _TransientError as error:
                if attempt + 1 == attempts:
                    raise
                self._wait_before_retry(error, attempt, f"{method} {path}")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _request_once(self, method: str, path: str, *, allow_not_found: bool, **kwargs: Any) -> requests.Response:
        if self.token_kind == "Personal Access Token" and "Authorization" not in self._session.headers:
            self._refresh_access_token()
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self.token_kind == "Personal Access Token":
            self._refresh_access_token()
            response = self._send(method, path, **kwargs)

        if response.status_code == 401:
            raise LabelStudioError(self._rejected_token_message(response.status_code, method, path))
        if response.status_code == 403:
            raise LabelStudioError(
                f"Label Studio at {self.url} denied {method} {path} (403 Forbidden) for the {self.token_kind}: "
                "its user lacks permission for this project or organisation; use an administrator's token"
            )
        if response.status_code == 404 and allow_not_found:
            return response
        if response.status_code in _RETRY_STATUSES:
            raise _TransientError(
                f"Label Studio request {method} {path} failed with status {response.status_code}: "
                f"{_error_detail(response)}"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio request {method} {path} failed with status {response.status_code}: "
                f"{_error_detail(response)}"
            )
        return response

    def _rejected_token_message(self, status: int, method: str, path: str) -> str:
        if self.token_kind == "Personal Access Token":
            advice = (
                "check that it was copied whole from Account & Settings > Personal Access Token, that it was "
                "not revoked, and that the organisation allows Personal Access Tokens"
            )
        else:
            advice = (
                "check the token (Account & Settings > Legacy Token) and that the organisation still allows "
                "legacy tokens (Organization > API Tokens Settings); a Personal Access Token works too"
            )
        return f"Label Studio at {self.url} rejected the {self.token_kind} ({status} on {method} {path}); {advice}"

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            raise _TransientError(
                f"cannot reach Label Studio at {self.url} ({method} {path}: {error}); "
                "check the URL and that the server runs"
            ) from error
        except requests.RequestException as error:
            raise LabelStudioError(
                f"Label Studio request {method} {path} to {self.url} failed: {error}"
            ) from error

    def _wait_before_retry(self, error: LabelStudioError, attempt: int, action: str) -> None:
        """Sleep before the next attempt, or raise at once when the managed server has exited."""
        if self._server_alive is not None:
            exited = self._server_alive()
            if exited is not None:
                raise LabelStudioError(f"{action} failed because the Label Studio server exited: {exited}") from error
        delay = self.backoff * 2**attempt
        logger.warning("%s failed (%s); attempt %d of %d in %.1f s", action, error, attempt + 2, self.retries + 1, delay)
        time.sleep(delay)

    def _refresh_access_token(self) -> None:
        self._session.headers.pop("Authorization", None)
        response = self._send("POST", "/api/token/refresh", json={"refresh": self._api_key})
        if response.status_code != 200:
            raise LabelStudioError(self._rejected_token_message(response.status_code, "POST", "/api/token/refresh"))
        self._session.headers["Authorization"] = f"Bearer {response.json()['access']}"


def _number_filter(column: str, operator: str, value: int) -> dict[str, Any]:
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": "Number", "value": value}


def _task_annotations(task: dict[str, Any]) -> TaskAnnotations:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    pair_id = data.get("pair_id")
    return TaskAnnotations(
        task_id=int(task["id"]),
        pair_id=pair_id if isinstance(pair_id, str) else None,
        updated_at=str(task.get("updated_at", "")),
        annotations=list(task.get("annotations") or []),
    )


def _batches(tasks: Sequence[PairTask], max_tasks: int, max_bytes: int) -> Iterator[list[PairTask]]:
    """Split `tasks` into consecutive batches of at most `max_tasks` tasks and about `max_bytes` of text.

    A single task larger than `max_bytes` still forms a batch of its own.
    """
    batch: list[PairTask] = []
    size = 0
    for task in tasks:
        task_bytes = sum(len(getattr(task, field).encode("utf-8")) for field in TASK_FIELDS)
        if batch and (len(batch) == max_tasks or size + task_bytes > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(task)
        size += task_bytes
    if batch:
        yield batch


def _pair_id_patterns(pair_ids: Sequence[str]) -> list[str]:
    """Group `pair_ids` into anchored alternations of at most about `_LOOKUP_PATTERN_CHARS` characters."""
    patterns: list[str] = []
    group: list[str] = []
    length = 0
    for pair_id in pair_ids:
        escaped = re.escape(pair_id)
        if group and length + len(escaped) + 1 > _LOOKUP_PATTERN_CHARS:
            patterns.append(f"^({'|'.join(group)})$")
            group, length = [], 0
        group.append(escaped)
        length += len(escaped) + 1
    if group:
        patterns.append(f"^({'|'.join(group)})$")
    return patterns


def _validate_tasks(tasks: Sequence[PairTask]) -> None:
    seen: set[str] = set()
    for task in tasks:
        for field in TASK_FIELDS:
            if not isinstance(getattr(task, field), str):
                raise InputError(
                    f"invalid {field} {getattr(task, field)!r} in pair {task.pair_id!r}; expected a string"
                )
        if task.pair_id in seen:
            raise InputError(f"duplicate pair_id {task.pair_id!r} in the tasks to push; pass each pair once")
        seen.add(task.pair_id)


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        detail = body.get("validation_errors") or body.get("detail") or body
        return json.dumps(detail, ensure_ascii=False)[:500]
    return json.dumps(body, ensure_ascii=False)[:500]
