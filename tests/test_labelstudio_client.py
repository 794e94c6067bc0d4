"""Tests of the Label Studio client and the simulated annotators, against the session's real server."""

from __future__ import annotations

import logging
import socket

import pytest
import requests

from connectors.labelstudio.client import (
    CHOICES,
    LabelStudioClient,
    PairTask,
    annotation_for_choice,
    parse_result,
)
from connectors.labelstudio.server import ServerInfo
from connectors.simulate import ensure_annotators, submit_annotations
from engine.errors import InputError, LabelStudioError

labelstudio = pytest.mark.labelstudio

# Texts that must survive push and read-back byte for byte: accents precomposed (NFC) and combining
# (NFD), emoji with a zero-width joiner and a skin tone, markup that must never run, and line breaks.
HARD_TEXTS = [
    "Quelle est la capitale de la Côte d'Ivoire ? Réponds en français, s'il te plaît.",
    "Yamoussoukro, mais Abidjan reste la ville la plus peuplée. 🇨🇮👩🏽‍💻✨",
    "Cafe\u0301 cre\u0300me bru\u0302le\u0301e (accents combinants), déjà vu, œuvre, « guillemets »",
    "<script>alert(1)</script><b>gras</b> &amp; &lt;tag&gt; \"quotes\" 'apostrophes'",
    "ligne 1\nligne 2\r\n\ttabulation, espace insécable\u00a0: fin",
]


def _pair_tasks(count: int, prefix: str = "pair") -> list[PairTask]:
    return [
        PairTask(pair_id=f"{prefix}-{number}", prompt=f"Prompt {number}", left=f"Left {number}", right=f"Right {number}")
        for number in range(count)
    ]


def _post_raw_annotation(client: LabelStudioClient, server: ServerInfo, task_id: int, body: dict) -> None:
    response = requests.post(
        f"{server.url}/api/tasks/{task_id}/annotations",
        headers={"Authorization": f"Token {server.api_key}"},
        json=body,
        timeout=30,
    )
    response.raise_for_status()


# ---- result parsing (no server)


@pytest.mark.parametrize("choice", CHOICES)
def test_parse_result_inverts_annotation(choice: str) -> None:
    result, was_cancelled = annotation_for_choice(choice)  # type: ignore[arg-type]

    assert parse_result(result, was_cancelled) == choice


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ([], "empty result"),
        (None, "empty result"),
        ([{"type": "pairwise", "from_name": "preference", "value": {"selected": "A"}}], "unknown pairwise selection"),
        ([{"type": "choices", "from_name": "verdict", "value": {"choices": ["Maybe"]}}], "unknown verdict"),
        ([{"type": "choices", "from_name": "verdict", "value": {"choices": ["Tie", "Both bad"]}}], "unknown verdict"),
        ([{"type": "textarea", "from_name": "comment", "value": {"text": ["ok"]}}], "unknown control name"),
        (
            [
                {"type": "pairwise", "from_name": "preference", "value": {"selected": "left"}},
                {"type": "choices", "from_name": "verdict", "value": {"choices": ["Tie"]}},
            ],
            "more than one outcome",
        ),
    ],
)
def test_parse_result_invalid(result: object, reason: str) -> None:
    outcome = parse_result(result, was_cancelled=False)

    assert outcome not in CHOICES
    assert reason in outcome


def test_parse_result_cancelled_is_skip() -> None:
    assert parse_result(None, was_cancelled=True) == "skip"


def test_annotation_for_choice_unknown() -> None:
    with pytest.raises(InputError, match="invalid choice 'a'"):
        annotation_for_choice("a")  # type: ignore[arg-type]


# ---- client against the real server


@labelstudio
def test_check_returns_version(labelstudio_server: ServerInfo) -> None:
    client = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)

    assert client.check() == "1.23.2"


@labelstudio
def test_check_rejects_wrong_legacy_token(labelstudio_server: ServerInfo, caplog: pytest.LogCaptureFixture) -> None:
    wrong_key = "0123456789abcdef" * 2 + "deadbeef"
    client = LabelStudioClient(labelstudio_server.url, wrong_key, retries=0)

    with caplog.at_level(logging.DEBUG), pytest.raises(LabelStudioError) as raised:
        client.check()

    assert "rejected the legacy API token (401" in str(raised.value)
    assert "legacy tokens" in str(raised.value)
    assert wrong_key not in str(raised.value)
    assert wrong_key not in caplog.text
    assert wrong_key not in repr(client)


@labelstudio
def test_check_personal_access_token(labelstudio_server: ServerInfo, personal_access_token: str) -> None:
    client = LabelStudioClient(labelstudio_server.url, personal_access_token)

    assert client.token_kind == "Personal Access Token"
    assert client.check() == "1.23.2"


@labelstudio
def test_check_rejects_wrong_personal_access_token(
    labelstudio_server: ServerInfo, personal_access_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    header, payload, signature = personal_access_token.split(".")
    tampered = f"{header}.{payload}.{signature[::-1]}"
    client = LabelStudioClient(labelstudio_server.url, tampered, retries=0)

    with caplog.at_level(logging.DEBUG), pytest.raises(LabelStudioError) as raised:
        client.check()

    assert "rejected the Personal Access Token (401" in str(raised.value)
    assert tampered not in str(raised.value)
    assert payload not in str(raised.value)
    assert tampered not in caplog.text


@labelstudio
def test_personal_access_token_push_and_pull(labelstudio_server: ServerInfo, personal_access_token: str) -> None:
    client = LabelStudioClient(labelstudio_server.url, personal_access_token)
    project_id = client.ensure_project(None, title="personal access token", maximum_annotations=1)
    task_ids = client.push(project_id, _pair_tasks(3))
    annotator_ids = ensure_annotators(client, 1)
    submit_annotations(client, project_id, {task_ids["pair-1"]: ["right"]}, annotator_ids)

    pulled = client.pull(project_id)

    assert [(record.pair_id, record.choice) for record in pulled.annotations] == [("pair-1", "right")]


def test_check_unreachable_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = LabelStudioClient(f"http://127.0.0.1:{closed_port}", "0" * 40, timeout=5, retries=0)

    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        client.check()


@labelstudio
def test_ensure_project_reuses_and_updates(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project

    reused = client.ensure_project(project_id, title="ignored", maximum_annotations=2, instructions="<p>Lisez</p>")
    project = client._request("GET", f"/api/projects/{project_id}").json()

    assert reused == project_id
    assert project["maximum_annotations"] == 2
    assert project["expert_instruction"] == "<p>Lisez</p>"
    assert project["show_instruction"] is True


@labelstudio
def test_ensure_project_missing(labelstudio_server: ServerInfo) -> None:
    client = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)

    with pytest.raises(LabelStudioError, match="project 999999 not found"):
        client.ensure_project(999999, title="missing")


@labelstudio
def test_ensure_project_foreign_config(labelstudio_server: ServerInfo) -> None:
    client = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)
    foreign = '<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="x"/></Choices></View>'
    project = client._request("POST", "/api/projects", json={"title": "foreign config", "label_config": foreign}).json()

    with pytest.raises(LabelStudioError, match="does not use the prefscout labelling config"):
        client.ensure_project(project["id"], title="foreign config")


@labelstudio
def test_push_twice_one_task_per_pair(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    tasks = _pair_tasks(7)

    first = client.push(project_id, tasks, batch_size=3)
    second = client.push(project_id, tasks + _pair_tasks(2, prefix="extra"), batch_size=3)

    assert client.counts(project_id)["tasks"] == 9
    assert len(first) == 7
    assert {pair_id: second[pair_id] for pair_id in first} == first
    assert client.task_ids(project_id) == second


@labelstudio
def test_push_rejects_duplicate_pair(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    tasks = _pair_tasks(2) + _pair_tasks(1)

    with pytest.raises(InputError, match="duplicate pair_id 'pair-0'"):
        client.push(project_id, tasks)

    assert client.counts(project_id)["tasks"] == 0


@labelstudio
def test_push_keeps_text_bytes(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    tasks = [
        PairTask(pair_id=f"utf8-{number}-é🎉", prompt=HARD_TEXTS[number], left=HARD_TEXTS[number - 1],
                 right=HARD_TEXTS[number - 2])
        for number in range(len(HARD_TEXTS))
    ]

    task_ids = client.push(project_id, tasks)

    for task in tasks:
        stored = client._request("GET", f"/api/tasks/{task_ids[task.pair_id]}").json()["data"]
        for field in ("pair_id", "prompt", "left", "right"):
            assert stored[field].encode("utf-8") == getattr(task, field).encode("utf-8"), (task.pair_id, field)


@labelstudio
def test_pull_choices_from_three_annotators(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    task_ids = client.push(project_id, _pair_tasks(4))
    annotator_ids = ensure_annotators(client, 3)
    emails = [client.users()[user_id] for user_id in annotator_ids]
    answers = {
        task_ids["pair-0"]: ["left", "right", "tie"],
        task_ids["pair-1"]: ["both_bad", "skip", "left"],
        task_ids["pair-2"]: ["right", "right", "both_bad"],
    }

    created = submit_annotations(client, project_id, answers, annotator_ids)
    pulled = client.pull(project_id)

    expected = {
        (task_id, emails[index], choice)
        for task_id, choices in answers.items()
        for index, choice in enumerate(choices)
    }
    assert created == 9
    assert {(record.task_id, record.annotator, record.choice) for record in pulled.annotations} == expected
    assert {record.pair_id for record in pulled.annotations} == {"pair-0", "pair-1", "pair-2"}
    assert len(set(emails)) == 3
    assert emails == [f"sim-annotator-{number}@prefscout.local" for number in (1, 2, 3)]
    assert pulled.invalid == []


@labelstudio
def test_pull_twice_same_records(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    task_ids = client.push(project_id, _pair_tasks(3))
    annotator_ids = ensure_annotators(client, 2)
    submit_annotations(client, project_id, {task_id: ["left", "skip"] for task_id in task_ids.values()}, annotator_ids)

    first = client.pull(project_id)
    second = client.pull(project_id)

    assert len(first.annotations) == 6
    assert sorted(first.annotations, key=lambda record: record.annotation_id) == sorted(
        second.annotations, key=lambda record: record.annotation_id
    )


@labelstudio
def test_submit_annotations_rerun_creates_nothing(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    task_ids = client.push(project_id, _pair_tasks(2))
    annotator_ids = ensure_annotators(client, 2)
    answers = {task_id: ["tie", "right"] for task_id in task_ids.values()}

    first = submit_annotations(client, project_id, answers, annotator_ids)
    second = submit_annotations(client, project_id, answers, annotator_ids)

    assert first == 4
    assert second == 0
    assert ensure_annotators(client, 2) == annotator_ids


@labelstudio
def test_submit_annotations_wrong_answer_count(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    annotator_ids = ensure_annotators(client, 2)

    with pytest.raises(InputError, match="expected one answer per annotator"):
        submit_annotations(client, project_id, {1: ["left"]}, annotator_ids)


@labelstudio
def test_pull_reports_invalid_results(
    labelstudio_project: tuple[LabelStudioClient, int], labelstudio_server: ServerInfo
) -> None:
    client, project_id = labelstudio_project
    task_ids = client.push(project_id, _pair_tasks(5))
    annotator_id = ensure_annotators(client, 1)[0]
    invalid_results = {
        "pair-0": [{"type": "pairwise", "from_name": "preference", "to_name": "left", "value": {"selected": "A"}}],
        "pair-1": [{"type": "choices", "from_name": "other", "to_name": "prompt", "value": {"choices": ["Tie"]}}],
        "pair-2": [
            {"type": "pairwise", "from_name": "preference", "to_name": "left", "value": {"selected": "left"}},
            {"type": "choices", "from_name": "verdict", "to_name": "prompt", "value": {"choices": ["Tie"]}},
        ],
        "pair-3": [],
    }
    for pair_id, result in invalid_results.items():
        body = {"result": result, "was_cancelled": False, "completed_by": annotator_id}
        _post_raw_annotation(client, labelstudio_server, task_ids[pair_id], body)
    submit_annotations(client, project_id, {task_ids["pair-4"]: ["right"]}, [annotator_id])

    pulled = client.pull(project_id)

    assert [record.pair_id for record in pulled.annotations] == ["pair-4"]
    assert len(pulled.invalid) == 4
    for pair_id in invalid_results:
        assert any(f"(pair {pair_id!r})" in message for message in pulled.invalid), pair_id


@labelstudio
def test_pull_ignores_drafts(
    labelstudio_project: tuple[LabelStudioClient, int], labelstudio_server: ServerInfo
) -> None:
    client, project_id = labelstudio_project
    task_ids = client.push(project_id, _pair_tasks(1))
    result, _ = annotation_for_choice("left")
    response = requests.post(
        f"{labelstudio_server.url}/api/tasks/{task_ids['pair-0']}/drafts",
        headers={"Authorization": f"Token {labelstudio_server.api_key}"},
        json={"result": result},
        timeout=30,
    )
    response.raise_for_status()

    pulled = client.pull(project_id)

    assert pulled.annotations == []
    assert pulled.invalid == []


@labelstudio
def test_open_tasks_and_counts(labelstudio_project: tuple[LabelStudioClient, int]) -> None:
    client, project_id = labelstudio_project
    client.ensure_project(project_id, title="ignored", maximum_annotations=1)
    task_ids = client.push(project_id, _pair_tasks(3))
    annotator_ids = ensure_annotators(client, 1)
    submit_annotations(client, project_id, {task_ids["pair-0"]: ["left"], task_ids["pair-1"]: ["skip"]}, annotator_ids)

    open_tasks = client.open_tasks(project_id)
    counts = client.counts(project_id)

    assert sorted(open_tasks) == sorted([(task_ids["pair-1"], "pair-1"), (task_ids["pair-2"], "pair-2")])
    assert counts["tasks"] == 3
    assert counts["annotations"] == 2
    assert counts["skipped"] == 1


@labelstudio
def test_read_retried_after_5xx(labelstudio_project: tuple[LabelStudioClient, int], labelstudio_server: ServerInfo) -> None:
    from labelstudio_helpers import FaultProxy

    _, project_id = labelstudio_project
    with FaultProxy(labelstudio_server.url, {("GET", f"/api/projects/{project_id}"): [502, 503]}) as proxy:
        client = LabelStudioClient(proxy.url, labelstudio_server.api_key, backoff=0.05)
        counts = client.counts(project_id)

    assert counts["tasks"] == 0
    assert proxy.count("GET", f"/api/projects/{project_id}") == 3
