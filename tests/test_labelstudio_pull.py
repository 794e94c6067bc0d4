"""Pull tests: annotations on the session's real Label Studio server become votes in a real store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from connectors.labelstudio.client import LabelStudioClient, annotation_for_choice
from connectors.labelstudio.server import ServerInfo
from connectors.simulate import ensure_annotators, submit_annotations
from engine import annotation
from engine.annotation import Project, pull_votes, push_pending, sync_counts
from engine.export_votes import aggregate_votes
from engine.store import Store
from engine.workspace import LabelStudioSettings
from labelstudio_helpers import seed_pairs

pytestmark = pytest.mark.labelstudio


def _prompts(count: int) -> list[tuple[str, list[str]]]:
    return [(f"Question {number} ?", [f"Réponse {number} A", f"Réponse {number} B"]) for number in range(count)]


class Setup:
    """A store with pairs, a fresh project on the session server, and the pairs pushed as tasks."""

    def __init__(self, server: ServerInfo, root: Path, pairs: int, *, push: bool = True, page_size: int = 1000) -> None:
        self.server = server
        self.workspace, self.store, self.pair_ids = seed_pairs(root, _prompts(pairs))
        self.client = LabelStudioClient(server.url, server.api_key, page_size=page_size)
        project_id = self.client.ensure_project(None, title=f"pull {root.name}"[:50], maximum_annotations=5)
        self.project = Project(self.client, project_id, f"{server.url}#{project_id}", LabelStudioSettings())
        self.task_ids: dict[str, int] = {}
        if push:
            push_pending(self.workspace, self.store, self.project)
            self.task_ids = {row["pair_id"]: row["task_id"] for row in self.store.execute("SELECT pair_id, task_id FROM pairs")}

    def votes(self) -> list[tuple[str, str, str]]:
        """(pair_id, annotator, outcome) of every stored vote, sorted."""
        rows = self.store.execute("SELECT pair_id, annotator, outcome FROM votes ORDER BY pair_id, annotator")
        return [(row["pair_id"], row["annotator"], row["outcome"]) for row in rows]

    def left_side(self, pair_id: str) -> str:
        return self.store.execute("SELECT left_side FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()["left_side"]

    def request(self, method: str, path: str, **kwargs) -> dict:
        response = self.client._request(method, path, **kwargs)
        return response.json() if response.content else {}


@pytest.fixture
def setup_factory(labelstudio_server: ServerInfo, tmp_path: Path) -> Iterator:
    made: list[Setup] = []

    def make(pairs: int, **options) -> Setup:
        made.append(Setup(labelstudio_server, tmp_path / f"ws{len(made)}", pairs, **options))
        return made[-1]

    yield make
    for setup in made:
        setup.store.close()


def test_pull_three_annotators_majority_left(setup_factory) -> None:
    setup = setup_factory(1)
    pair_id = setup.pair_ids[0]
    annotators = ensure_annotators(setup.client, 3)
    submit_annotations(setup.client, setup.project.project_id, {setup.task_ids[pair_id]: ["left", "left", "right"]}, annotators)

    report = pull_votes(setup.store, setup.project)
    outcomes = [outcome for _, _, outcome in setup.votes()]
    aggregate = aggregate_votes(outcomes)

    left = setup.left_side(pair_id)
    assert report.added == 3
    assert len(setup.votes()) == 3
    assert len({annotator for _, annotator, _ in setup.votes()}) == 3
    assert aggregate.outcome == left
    assert aggregate.agreement == pytest.approx(2 / 3)


@pytest.mark.parametrize("tasks", [101, 250])
def test_pull_every_page_once(setup_factory, tasks: int) -> None:
    setup = setup_factory(tasks, push=False, page_size=100)
    annotators = ensure_annotators(setup.client, 2)
    left, right = annotation_for_choice("left")[0], annotation_for_choice("right")[0]
    body = [
        {
            "data": {"pair_id": pair_id, "prompt": "p", "left": "l", "right": "r"},
            "annotations": [{"result": left, "completed_by": annotators[0]}, {"result": right, "completed_by": annotators[1]}],
        }
        for pair_id in setup.pair_ids
    ]
    setup.request("POST", f"/api/projects/{setup.project.project_id}/import", json=body)

    first = pull_votes(setup.store, setup.project)
    second = pull_votes(setup.store, setup.project)
    votes = setup.votes()

    assert first.added == 2 * tasks
    assert len(votes) == 2 * tasks
    assert len(set(votes)) == 2 * tasks
    assert {pair_id for pair_id, _, _ in votes} == set(setup.pair_ids)
    assert second.mode == "incremental"
    assert second.added == 0
    assert second.removed == 0


def test_pull_cancelled_updated_deleted(setup_factory) -> None:
    setup = setup_factory(3)
    skipped, updated, deleted = setup.pair_ids
    annotator = ensure_annotators(setup.client, 1)
    submit_annotations(
        setup.client, setup.project.project_id,
        {setup.task_ids[skipped]: ["skip"], setup.task_ids[updated]: ["left"], setup.task_ids[deleted]: ["tie"]},
        annotator,
    )
    pull_votes(setup.store, setup.project)
    before = {pair_id: outcome for pair_id, _, outcome in setup.votes()}
    annotations = {item["task"]: item["id"] for item in setup.client.raw_annotations(setup.project.project_id)}

    right = annotation_for_choice("right")[0]
    setup.request("PATCH", f"/api/annotations/{annotations[setup.task_ids[updated]]}", json={"result": right})
    setup.request("DELETE", f"/api/annotations/{annotations[setup.task_ids[deleted]]}")
    report = pull_votes(setup.store, setup.project)
    after = {pair_id: outcome for pair_id, _, outcome in setup.votes()}

    assert before == {skipped: "skip", updated: setup.left_side(updated), deleted: "tie"}
    assert report.mode == "incremental"
    assert report.updated == 1
    assert report.removed == 1
    assert after == {skipped: "skip", updated: "b" if setup.left_side(updated) == "a" else "a"}


def test_pull_tie_and_both_bad(setup_factory) -> None:
    setup = setup_factory(2)
    tie, both_bad = setup.pair_ids
    annotators = ensure_annotators(setup.client, 2)
    submit_annotations(
        setup.client, setup.project.project_id,
        {setup.task_ids[tie]: ["tie", "tie"], setup.task_ids[both_bad]: ["both_bad", "both_bad"]}, annotators,
    )

    pull_votes(setup.store, setup.project)
    outcomes = {pair_id: outcome for pair_id, _, outcome in setup.votes()}

    assert outcomes == {tie: "tie", both_bad: "both_bad"}
    assert aggregate_votes(["tie", "tie"]).outcome == "tie"


def test_pull_invalid_and_drafts_not_votes(setup_factory) -> None:
    setup = setup_factory(4)
    annotator = ensure_annotators(setup.client, 1)[0]
    bad_side = [{"type": "pairwise", "from_name": "preference", "to_name": "left", "value": {"selected": "A"}}]
    bad_control = [{"type": "choices", "from_name": "other", "to_name": "prompt", "value": {"choices": ["Tie"]}}]
    setup.request("POST", f"/api/tasks/{setup.task_ids[setup.pair_ids[0]]}/annotations",
                  json={"result": bad_side, "completed_by": annotator})
    setup.request("POST", f"/api/tasks/{setup.task_ids[setup.pair_ids[1]]}/annotations",
                  json={"result": bad_control, "completed_by": annotator})
    setup.request("POST", f"/api/tasks/{setup.task_ids[setup.pair_ids[2]]}/drafts",
                  json={"result": annotation_for_choice("left")[0]})
    submit_annotations(setup.client, setup.project.project_id, {setup.task_ids[setup.pair_ids[3]]: ["right"]}, [annotator])

    report = pull_votes(setup.store, setup.project)
    counts = sync_counts(setup.store, setup.project.key)

    assert [pair_id for pair_id, _, _ in setup.votes()] == [setup.pair_ids[3]]
    assert len(report.invalid) == 2
    assert "unknown pairwise selection 'A'" in report.invalid[0] + report.invalid[1]
    assert "unknown control name 'other'" in report.invalid[0] + report.invalid[1]
    assert counts == {"vote": 1, "invalid": 2}


def test_pull_deleted_task_removes_votes(setup_factory) -> None:
    setup = setup_factory(3)
    annotators = ensure_annotators(setup.client, 2)
    submit_annotations(
        setup.client, setup.project.project_id, {task_id: ["left", "tie"] for task_id in setup.task_ids.values()}, annotators
    )
    pull_votes(setup.store, setup.project)

    setup.request("DELETE", f"/api/tasks/{setup.task_ids[setup.pair_ids[0]]}")
    report = pull_votes(setup.store, setup.project)

    assert report.recounted_tasks == 1
    assert report.removed == 2
    assert {pair_id for pair_id, _, _ in setup.votes()} == set(setup.pair_ids[1:])


def test_push_recreates_deleted_task(setup_factory) -> None:
    setup = setup_factory(2)
    deleted = setup.pair_ids[0]
    setup.request("DELETE", f"/api/tasks/{setup.task_ids[deleted]}")

    pushed = push_pending(setup.workspace, setup.store, setup.project)
    on_server = setup.client.task_ids(setup.project.project_id)

    assert pushed == 1
    assert set(on_server) == set(setup.pair_ids)
    assert on_server[deleted] != setup.task_ids[deleted]
    assert push_pending(setup.workspace, setup.store, setup.project) == 0


def test_pull_same_annotator_latest_wins(setup_factory) -> None:
    setup = setup_factory(1)
    annotator = ensure_annotators(setup.client, 1)[0]
    task_id = setup.task_ids[setup.pair_ids[0]]
    setup.client.create_annotation(task_id, "left", completed_by=annotator)
    setup.client.create_annotation(task_id, "both_bad", completed_by=annotator)

    report = pull_votes(setup.store, setup.project)

    assert [outcome for _, _, outcome in setup.votes()] == ["both_bad"]
    assert report.superseded == 1


def test_pull_incremental_reads_changed_tasks(setup_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(annotation, "PULL_OVERLAP", timedelta(0))
    setup = setup_factory(12)
    annotator = ensure_annotators(setup.client, 1)
    submit_annotations(setup.client, setup.project.project_id, {setup.task_ids[pair_id]: ["left"] for pair_id in setup.pair_ids[:10]}, annotator)
    time.sleep(1.1)  # the server's Date header has whole seconds
    first = pull_votes(setup.store, setup.project)

    time.sleep(1.1)
    submit_annotations(setup.client, setup.project.project_id, {setup.task_ids[setup.pair_ids[10]]: ["right"]}, annotator)
    second = pull_votes(setup.store, setup.project)
    full = pull_votes(setup.store, setup.project, full=True)

    assert first.mode == "full"
    assert first.tasks_read == 10
    assert second.mode == "incremental"
    assert second.tasks_read == 1
    assert second.added == 1
    assert full.tasks_read == 11
    assert full.added == 0
    assert full.removed == 0
    assert len(setup.votes()) == 11


def test_pull_position_rate_in_status(setup_factory) -> None:
    from engine.status import position_bias

    setup = setup_factory(4)
    annotator = ensure_annotators(setup.client, 1)
    answers = {setup.task_ids[pair_id]: [choice] for pair_id, choice in zip(setup.pair_ids, ["left", "left", "left", "tie"])}
    submit_annotations(setup.client, setup.project.project_id, answers, annotator)

    pull_votes(setup.store, setup.project)
    position = position_bias(setup.store)

    assert position == {"decisive_votes": 3, "chosen_shown_left": 3, "chosen_shown_left_rate": 1.0}


def test_pull_store_reopened_keeps_record(setup_factory) -> None:
    setup = setup_factory(2)
    annotator = ensure_annotators(setup.client, 1)
    submit_annotations(setup.client, setup.project.project_id, {setup.task_ids[setup.pair_ids[0]]: ["left"]}, annotator)
    pull_votes(setup.store, setup.project)
    setup.store.close()

    setup.store = Store(setup.workspace.store_path)
    report = pull_votes(setup.store, setup.project)

    assert report.mode == "incremental"
    assert report.added == 0
    assert len(setup.votes()) == 1
