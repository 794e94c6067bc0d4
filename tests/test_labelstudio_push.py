"""Push tests against the session's real Label Studio server: idempotence, retries, long texts, instructions."""

from __future__ import annotations

import pytest

from connectors.labelstudio.client import LabelStudioClient, PairTask
from connectors.labelstudio.labeling import CUT_MARKER, display_text, is_pairwise_config, labeling_config
from connectors.labelstudio.server import ServerInfo
from engine.annotation import Project, push_pending
from engine.errors import InputError, LabelStudioError
from engine.workspace import LabelStudioSettings
from labelstudio_helpers import DROP_RESPONSE, FaultProxy, seed_pairs

labelstudio = pytest.mark.labelstudio
IMPORT = ("POST", "/api/projects/")


def _pair_tasks(count: int, prefix: str = "pair") -> list[PairTask]:
    return [
        PairTask(pair_id=f"{prefix}-{number}", prompt=f"Prompt {number}", left=f"Left {number}", right=f"Right {number}")
        for number in range(count)
    ]


def _new_project(server: ServerInfo, title: str) -> tuple[LabelStudioClient, int]:
    client = LabelStudioClient(server.url, server.api_key)
    return client, client.ensure_project(None, title=title, maximum_annotations=1)


def _proxied_client(proxy: FaultProxy, server: ServerInfo, **options: float) -> LabelStudioClient:
    return LabelStudioClient(proxy.url, server.api_key, backoff=0.05, **options)


# ---- display of long texts (no server)


def test_display_text_short_unchanged() -> None:
    assert display_text("Café ☕", 10) == "Café ☕"


def test_display_text_no_limit() -> None:
    text = "x" * 300_000

    assert display_text(text, 0) == text


def test_display_text_cut_has_marker() -> None:
    text = "é" * 300_000

    shown = display_text(text, 1_000)

    assert shown.startswith("é" * 1_000)
    assert shown.endswith(CUT_MARKER.format(hidden=299_000, total=300_000))
    assert "299,000 of 300,000 characters are not shown" in shown


def test_display_text_keeps_combining_mark() -> None:
    text = "abcde\u0301fgh"  # the acute accent belongs to the "e" at index 4

    shown = display_text(text, 5)

    assert shown.startswith("abcd\n")


def test_display_text_keeps_emoji_sequence() -> None:
    text = "ab👩🏽\u200d💻 end"

    shown = display_text(text, 4)

    assert shown.startswith("ab\n")


def test_labeling_config_instructions_escaped() -> None:
    config = labeling_config('Lisez <b>tout</b> & "jugez"\nPuis votez.')

    assert 'value="Lisez &lt;b&gt;tout&lt;/b&gt; &amp; &quot;jugez&quot;&#10;Puis votez."' in config
    assert is_pairwise_config(config)


def test_labeling_config_without_instructions() -> None:
    config = labeling_config("")

    assert "prefscout-instructions" not in config
    assert is_pairwise_config(config)


def test_is_pairwise_config_rejects_other() -> None:
    assert not is_pairwise_config('<View><Text name="text" value="$text"/></View>')


# ---- push against the real server


@labelstudio
def test_push_2000_twice_2000_tasks(labelstudio_server: ServerInfo) -> None:
    client, project_id = _new_project(labelstudio_server, "push 2000 twice")
    tasks = _pair_tasks(2_000)

    first = client.push(project_id, tasks, batch_size=500)
    second = client.push(project_id, tasks, batch_size=500)

    assert client.counts(project_id)["tasks"] == 2_000
    assert len(first) == 2_000
    assert second == first
    assert len(set(first.values())) == 2_000


@labelstudio
def test_push_lost_response_retried_once(labelstudio_server: ServerInfo) -> None:
    _, project_id = _new_project(labelstudio_server, "lost response")
    tasks = _pair_tasks(30)

    with FaultProxy(labelstudio_server.url, {IMPORT: ["forward", DROP_RESPONSE]}) as proxy:
        client = _proxied_client(proxy, labelstudio_server)
        task_ids = client.push(project_id, tasks, batch_size=10)

    direct = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)
    assert direct.counts(project_id)["tasks"] == 30
    assert direct.task_ids(project_id) == task_ids
    assert proxy.count("POST", "/api/projects/", DROP_RESPONSE) == 1
    # Three batches and no second import of the batch whose response was lost.
    assert proxy.count("POST", "/api/projects/") == 3


@labelstudio
def test_push_retries_5xx(labelstudio_server: ServerInfo) -> None:
    _, project_id = _new_project(labelstudio_server, "server errors")

    with FaultProxy(labelstudio_server.url, {IMPORT: [503, 502]}) as proxy:
        client = _proxied_client(proxy, labelstudio_server)
        task_ids = client.push(project_id, _pair_tasks(5))

    assert len(task_ids) == 5
    assert proxy.count("POST", "/api/projects/", 503) == 1
    assert proxy.count("POST", "/api/projects/", 502) == 1
    assert LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key).counts(project_id)["tasks"] == 5


@labelstudio
def test_push_gives_up_after_retries(labelstudio_server: ServerInfo) -> None:
    _, project_id = _new_project(labelstudio_server, "server down")

    with FaultProxy(labelstudio_server.url, {IMPORT: [503] * 3}) as proxy:
        client = _proxied_client(proxy, labelstudio_server, retries=2)
        with pytest.raises(LabelStudioError, match="failed after 3 attempts.*no task is created twice"):
            client.push(project_id, _pair_tasks(5))


@labelstudio
def test_push_finds_ids_with_regex_characters(labelstudio_server: ServerInfo) -> None:
    client, project_id = _new_project(labelstudio_server, "special pair ids")
    odd_ids = ["a.b", "a+b", "(x|y)", "pair-é🎉", "[1]", "A.B", "a*b$", "^start"]
    tasks = [PairTask(pair_id=pair_id, prompt="p", left="l", right="r") for pair_id in odd_ids]
    client.push(project_id, tasks[:4])

    found = client.find_tasks(project_id, odd_ids + ["aXb", "x"])
    client.push(project_id, tasks)

    assert set(found) == set(odd_ids[:4])
    assert client.counts(project_id)["tasks"] == len(odd_ids)


@labelstudio
def test_push_interrupted_rerun_no_duplicate(labelstudio_server: ServerInfo, tmp_path) -> None:
    texts = [(f"Prompt {number}", [f"Answer {number}a", f"Answer {number}b"]) for number in range(25)]
    workspace, store, pair_ids = seed_pairs(tmp_path / "ws", texts)
    _, project_id = _new_project(labelstudio_server, "interrupted push")
    key = f"{labelstudio_server.url}#{project_id}"
    settings = LabelStudioSettings(batch_size=10)

    # The server accepts the second batch, but the connection drops before the client reads the
    # response, and with no retry allowed the push stops there, as a crash would.
    with FaultProxy(labelstudio_server.url, {IMPORT: ["forward", DROP_RESPONSE]}) as proxy:
        client = LabelStudioClient(proxy.url, labelstudio_server.api_key, retries=0)
        with pytest.raises(LabelStudioError):
            push_pending(workspace, store, Project(client, project_id, key, settings))
    recorded_after_crash = store.count("SELECT COUNT(*) FROM pairs WHERE task_id IS NOT NULL")

    direct = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)
    pushed = push_pending(workspace, store, Project(direct, project_id, key, settings))
    stored = {row["pair_id"]: row["task_id"] for row in store.execute("SELECT pair_id, task_id FROM pairs")}
    store.close()

    assert recorded_after_crash == 10
    assert pushed == 15
    assert direct.counts(project_id)["tasks"] == 25
    assert direct.task_ids(project_id) == stored
    assert set(stored) == set(pair_ids)


@labelstudio
def test_push_long_text_cut_store_whole(labelstudio_server: ServerInfo, tmp_path) -> None:
    long_text = ("Une très longue réponse, avec des accents et 🎉. " * 7_000)[:300_000]
    workspace, store, _ = seed_pairs(tmp_path / "ws", [("Résume ce texte.", [long_text, "Court."])], left_side=lambda _: "a")
    client, project_id = _new_project(labelstudio_server, "long texts")
    project = Project(client, project_id, f"{labelstudio_server.url}#{project_id}", LabelStudioSettings(max_display_chars=50_000))

    push_pending(workspace, store, project)
    task_id = store.execute("SELECT task_id FROM pairs").fetchone()["task_id"]
    stored_text = store.execute("SELECT text FROM responses WHERE response_id = 'prompt-0-response-0'").fetchone()["text"]
    store.close()
    shown = client._request("GET", f"/api/tasks/{task_id}").json()["data"]["left"]

    assert len(long_text) == 300_000
    assert shown.startswith(long_text[:50_000])
    assert "250,000 of 300,000 characters are not shown" in shown
    assert stored_text == long_text


@labelstudio
def test_push_long_text_uncut(labelstudio_server: ServerInfo) -> None:
    client, project_id = _new_project(labelstudio_server, "long text uncut")
    long_text = "Ligne numéro 1 ✓\n" * 17_648  # 300,016 characters

    task_ids = client.push(project_id, [PairTask(pair_id="long", prompt="p", left=long_text, right="r")])
    shown = client._request("GET", f"/api/tasks/{task_ids['long']}").json()["data"]["left"]

    assert shown.encode("utf-8") == long_text.encode("utf-8")


@labelstudio
def test_ensure_project_instructions_in_config(labelstudio_server: ServerInfo) -> None:
    client = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)
    project_id = client.ensure_project(None, title="instructions", instructions="Jugez la justesse d'abord.")

    client.ensure_project(project_id, title="ignored", maximum_annotations=2, instructions="Nouvelles consignes.")
    project = client._request("GET", f"/api/projects/{project_id}").json()

    assert 'value="Nouvelles consignes."' in project["label_config"]
    assert project["expert_instruction"] == "Nouvelles consignes."
    assert project["maximum_annotations"] == 2


@labelstudio
def test_ensure_project_accepts_old_config(labelstudio_server: ServerInfo) -> None:
    client = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)
    old_config = labeling_config("")
    created = client._request("POST", "/api/projects", json={"title": "old config", "label_config": old_config}).json()

    project_id = client.ensure_project(created["id"], title="old config", instructions="Consignes.")
    project = client._request("GET", f"/api/projects/{project_id}").json()

    assert project["label_config"] == labeling_config("Consignes.")


def test_push_rejects_bad_batch_size() -> None:
    client = LabelStudioClient("http://127.0.0.1:9", "0" * 40)

    with pytest.raises(InputError, match="invalid batch_size 0"):
        client.push(1, _pair_tasks(1), batch_size=0)


def test_push_batches_split_by_size() -> None:
    from connectors.labelstudio.client import _batches

    tasks = [PairTask(pair_id=f"p{number}", prompt="p", left="é" * 400, right="r") for number in range(10)]

    batches = list(_batches(tasks, max_tasks=4, max_bytes=2_000))

    assert [len(batch) for batch in batches] == [2, 2, 2, 2, 2]
    assert [task for batch in batches for task in batch] == tasks


def test_push_batches_split_by_count() -> None:
    from connectors.labelstudio.client import _batches

    batches = list(_batches(_pair_tasks(10), max_tasks=4, max_bytes=10**9))

    assert [len(batch) for batch in batches] == [4, 4, 2]
