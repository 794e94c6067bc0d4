"""Push pairs to a Label Studio project as pairwise tasks and pull every annotation back.

The client works on plain data (`PairTask` in, `AnnotationRecord` out) and does not use the prefscout
store. It talks to the REST API with `requests` rather than label-studio-sdk, because the calls it needs
(``return_task_ids`` on import, ``include`` to trim task pages, a pager that ends with a 404) are plain
query parameters there. Facts about the API were measured on label-studio 1.23.2.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, get_args

import requests

from engine.errors import InputError, LabelStudioError

logger = logging.getLogger(__name__)

Choice = Literal["left", "right", "tie", "both_bad", "skip"]
CHOICES: tuple[str, ...] = get_args(Choice)

# Control and object tag names of labeling_config.xml; results refer to them in from_name and to_name.
PAIRWISE_CONTROL = "preference"
VERDICT_CONTROL = "verdict"
PROMPT_OBJECT = "prompt"
SIDES = ("left", "right")
VERDICT_CHOICES = {"Tie": "tie", "Both bad": "both_bad"}
TASK_FIELDS = ("pair_id", "prompt", "left", "right")

_PAGE_SIZE = 1000
_TASK_PAGE_FIELDS = "id,data,is_labeled"
# Label Studio requires a project title of 3 to 50 characters.
_TITLE_LENGTH = (3, 50)


def labeling_config() -> str:
    """Return the Label Studio labelling config (XML) for pairwise tasks."""
    return resources.files(__package__).joinpath("labeling_config.xml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class PairTask:
    """One pair to show to annotators; `left` and `right` are the texts in their display order."""

    pair_id: str
    prompt: str
    left: str
    right: str


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


def annotation_for_choice(choice: Choice) -> tuple[list[dict[str, Any]], bool]:
    """Build the Label Studio result list and ``was_cancelled`` flag that stand for `choice`.

    This is what the labelling config produces in the browser; `parse_result` is its inverse.
    """
    if choice in SIDES:
        value = {"selected": choice}
        return [{"type": "pairwise", "from_name": PAIRWISE_CONTROL, "to_name": choice, "value": value}], False
    if choice == "skip":
        return [], True
    for label, verdict in VERDICT_CHOICES.items():
        if verdict == choice:
            value = {"choices": [label]}
            return [{"type": "choices", "from_name": VERDICT_CONTROL, "to_name": PROMPT_OBJECT, "value": value}], False
    raise InputError(f"invalid choice {choice!r}; expected one of {', '.join(CHOICES)}")


def parse_result(result: Any, was_cancelled: bool) -> Choice | str:
    """Reduce an annotation's result list to a Choice, or return why the labelling config cannot produce it.

    A cancelled annotation is a skip whatever its result. Otherwise the result must contain exactly one
    outcome: a pairwise side or one verdict choice. The return value is a `Choice` when valid and a
    reason (a sentence that is never a Choice) when invalid.
    """
    if was_cancelled:
        return "skip"
    if not isinstance(result, list) or not result:
        return "empty result"

    outcomes: list[Choice] = []
    for item in result:
        outcome = _parse_result_item(item)
        if outcome not in CHOICES:
            return outcome
        outcomes.append(outcome)  # type: ignore[arg-type]

    if len(outcomes) > 1:
        return f"more than one outcome ({', '.join(outcomes)})"
    return outcomes[0]


def _parse_result_item(item: Any) -> str:
    if not isinstance(item, dict):
        return f"result item {item!r} is not an object"
    control = item.get("from_name")
    value = item.get("value") if isinstance(item.get("value"), dict) else {}

    if control == PAIRWISE_CONTROL:
        selected = value.get("selected")
        if item.get("type") == "pairwise" and selected in SIDES:
            return selected
        return f"unknown pairwise selection {selected!r} (expected 'left' or 'right')"

    if control == VERDICT_CONTROL:
        choices = value.get("choices")
        if item.get("type") == "choices" and isinstance(choices, list) and len(choices) == 1:
            verdict = VERDICT_CHOICES.get(choices[0])
            if verdict is not None:
                return verdict
        return f"unknown verdict choices {choices!r} (expected ['Tie'] or ['Both bad'])"

    return f"unknown control name {control!r} (expected {PAIRWISE_CONTROL!r} or {VERDICT_CONTROL!r})"


class LabelStudioClient:
    """A Label Studio REST client authenticated with a legacy API token or a Personal Access Token."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"invalid Label Studio URL {url!r}; expected http://host:port")
        if not api_key:
            raise InputError("missing Label Studio API key; pass the admin token from credentials.json")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._session = requests.Session()
        self._users: dict[int, str] = {}
        # A Personal Access Token is a JWT (three dot-separated parts). It is exchanged for an access
        # token that expires after 5 minutes. A legacy token is sent as it is.
        self._is_personal_access_token = api_key.count(".") == 2
        if not self._is_personal_access_token:
            self._session.headers["Authorization"] = f"Token {api_key}"

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

        An existing project must use this connector's labelling config. Its maximum number of annotations
        per task and its instructions are updated to the given values when they differ.
        """
        if maximum_annotations < 1:
            raise InputError(f"invalid maximum_annotations {maximum_annotations}; expected 1 or more")
        settings = {
            "maximum_annotations": maximum_annotations,
            "expert_instruction": instructions,
            "show_instruction": bool(instructions),
        }

        if project_id is None:
            low, high = _TITLE_LENGTH
            if not low <= len(title) <= high:
                raise InputError(f"invalid project title {title!r}; expected {low} to {high} characters")
            body = {"title": title, "label_config": labeling_config(), **settings}
            created = self._request("POST", "/api/projects", json=body).json()
            logger.info("Created Label Studio project %d (%r)", created["id"], title)
            return int(created["id"])

        response = self._request("GET", f"/api/projects/{project_id}", allow_not_found=True)
        if response.status_code == 404:
            raise LabelStudioError(
                f"Label Studio project {project_id} not found at {self.url}; pass None to create a project"
            )
        project = response.json()
        if project.get("label_config", "").strip() != labeling_config().strip():
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

    # ---- tasks

    def push(self, project_id: int, tasks: Sequence[PairTask], *, batch_size: int = 500) -> dict[str, int]:
        """Import `tasks` that the project does not have yet; return pair_id -> task_id for all of them.

        A pair already on the server (same ``data.pair_id``) is not imported again, because Label Studio
        does not deduplicate imports. Two concurrent pushes of one pair can still both import it.
        """
        if batch_size < 1:
            raise InputError(f"invalid batch_size {batch_size}; expected 1 or more")
        _validate_tasks(tasks)

        task_ids = self.task_ids(project_id)
        requested = {task.pair_id for task in tasks}
        result = {pair_id: task_id for pair_id, task_id in task_ids.items() if pair_id in requested}
        new_tasks = [task for task in tasks if task.pair_id not in task_ids]

        started = time.monotonic()
        for start in range(0, len(new_tasks), batch_size):
            batch = new_tasks[start : start + batch_size]
            result.update(self._import_batch(project_id, batch))
        logger.info(
            "Pushed %d new tasks to project %d in %.1f s (%d already there)",
            len(new_tasks), project_id, time.monotonic() - started, len(tasks) - len(new_tasks),
        )
        return result

    def task_ids(self, project_id: int) -> dict[str, int]:
        """Map pair_id -> task_id for every task of the project that has a ``pair_id``.

        When a pair has several tasks (two concurrent pushes, or a manual import), the lowest id wins.
        """
        mapping: dict[str, int] = {}
        for task in self._iter_tasks(project_id, include=_TASK_PAGE_FIELDS):
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
            for task in self._iter_tasks(project_id, include=_TASK_PAGE_FIELDS)
            if not task.get("is_labeled") and isinstance(task.get("data", {}).get("pair_id"), str)
        ]

    def _import_batch(self, project_id: int, batch: Sequence[PairTask]) -> dict[str, int]:
        body = [{"data": {field: getattr(task, field) for field in TASK_FIELDS}} for task in batch]
        response = self._request(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=body
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

    def pull(self, project_id: int) -> PullResult:
        """Read every submitted annotation of every annotator, skips included and drafts excluded."""
        annotations: list[AnnotationRecord] = []
        invalid: list[str] = []
        for annotation in self.raw_annotations(project_id):
            outcome = parse_result(annotation.get("result"), bool(annotation.get("was_cancelled")))
            annotation_id = int(annotation["id"])
            task_id = int(annotation["task"])
            pair_id = annotation["pair_id"]
            if outcome not in CHOICES:
                invalid.append(f"annotation {annotation_id} on task {task_id} (pair {pair_id!r}): {outcome}")
                continue
            annotations.append(
                AnnotationRecord(
                    annotation_id=annotation_id,
                    task_id=task_id,
                    pair_id=pair_id,
                    annotator=self._annotator_name(annotation.get("completed_by")),
                    choice=outcome,  # type: ignore[arg-type]
                    created_at=str(annotation.get("created_at", "")),
                    updated_at=str(annotation.get("updated_at", "")),
                )
            )

        if invalid:
            logger.warning("%d annotations in project %d have invalid results", len(invalid), project_id)
        logger.info("Pulled %d annotations from project %d", len(annotations), project_id)
        return PullResult(annotations=annotations, invalid=invalid)

    def raw_annotations(self, project_id: int) -> list[dict[str, Any]]:
        """Return every annotation of the project as the server sends it, with the task's ``pair_id`` added.

        Only tasks with at least one submitted or cancelled annotation are read, through a Data Manager
        filter. Tasks without a ``pair_id`` are ignored.
        """
        # NOTE: for 10k tasks with 20k annotations this takes 27-30 s, and the export API 14 s (label-studio
        # 1.23.2, 2 cores). The export API also saves a copy of the whole project (15 MB here) under the
        # server's data/export on every call and never deletes it, so repeated pulls would fill the disk.
        has_annotations = {
            "conjunction": "or",
            "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
                {"filter": "filter:tasks:cancelled_annotations", "operator": "greater", "type": "Number", "value": 0},
            ],
        }
        query = json.dumps({"filters": has_annotations})
        annotations = []
        for task in self._iter_tasks(project_id, fields="all", query=query):
            pair_id = task.get("data", {}).get("pair_id")
            if not isinstance(pair_id, str):
                continue
            for annotation in task.get("annotations") or []:
                annotations.append({**annotation, "task": int(task["id"]), "pair_id": pair_id})
        return annotations

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

    def _iter_tasks(self, project_id: int, **params: str) -> Iterator[dict[str, Any]]:
        """Yield the project's tasks page by page; Label Studio ends the pager with a 404 "Invalid page"."""
        page = 1
        while True:
            query = {"project": project_id, "page": page, "page_size": _PAGE_SIZE, **params}
            response = self._request("GET", "/api/tasks", params=query, allow_not_found=True)
            if response.status_code == 404:
                return
            tasks = response.json().get("tasks", [])
            yield from tasks
            if len(tasks) < _PAGE_SIZE:
                return
            page += 1

    def _request(self, method: str, path: str, *, allow_not_found: bool = False, **kwargs: Any) -> requests.Response:
        """Send one API request; raise LabelStudioError on a network failure or an error status."""
        if self._is_personal_access_token and "Authorization" not in self._session.headers:
            self._refresh_access_token()
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self._is_personal_access_token:
            self._refresh_access_token()
            response = self._send(method, path, **kwargs)

        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} rejected the API key ({response.status_code} on {method} {path}); "
                "use the token from credentials.json, or a legacy token only where the organisation enables them"
            )
        if response.status_code == 404 and allow_not_found:
            return response
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio request {method} {path} failed with status {response.status_code}: "
                f"{_error_detail(response)}"
            )
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({method} {path}: {error}); "
                "check the URL and that the server runs"
            ) from error

    def _refresh_access_token(self) -> None:
        self._session.headers.pop("Authorization", None)
        response = self._send("POST", "/api/token/refresh", json={"refresh": self._api_key})
        if response.status_code != 200:
            raise LabelStudioError(
                f"Label Studio at {self.url} rejected the Personal Access Token ({response.status_code}); "
                "create a new one in the account settings"
            )
        self._session.headers["Authorization"] = f"Bearer {response.json()['access']}"


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
