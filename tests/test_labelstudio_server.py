"""Tests of the managed Label Studio server, against real servers started in temporary state dirs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from connectors.labelstudio import server
from connectors.labelstudio.client import LabelStudioClient
from connectors.labelstudio.server import (
    read_credentials,
    server_exit_reason,
    server_status,
    start_server,
    stop_server,
)
from connectors.labelstudio.template import copy_template
from engine.cli import main
from engine.errors import LabelStudioError

pytestmark = pytest.mark.labelstudio

# Start ports for servers of these tests; start_server moves past busy ones.
START_PORT = 18300


def _file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fake_executable(tmp_path: Path, body: str) -> str:
    """Write a stand-in for label-studio that runs `body` as a shell script."""
    path = tmp_path / "fake-label-studio"
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    return int(finished.stdout)


def test_template_credentials_private(labelstudio_template: Path) -> None:
    credentials_path = labelstudio_template / "credentials.json"
    credentials = read_credentials(labelstudio_template)

    assert _file_mode(credentials_path) == 0o600
    assert credentials is not None
    assert set(credentials) == {"email", "password", "api_key", "secret_key"}
    assert credentials["secret_key"].isalnum()


def test_server_start_status_stop(labelstudio_template: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    info = start_server(state_dir, port=START_PORT, template_dir=labelstudio_template)
    try:
        status = server_status(state_dir)
        record = json.loads((state_dir / "server.json").read_text(encoding="utf-8"))

        assert status["running"] is True
        assert status["version"] == "1.23.2"
        assert status["url"] == info.url
        assert record["pid"] == info.pid
        assert _file_mode(state_dir / "credentials.json") == 0o600
        assert info.url.startswith("http://127.0.0.1:")
        assert (state_dir / "data" / "xdg-config").is_dir()
    finally:
        stopped = stop_server(state_dir)

    assert stopped is True
    assert server_status(state_dir)["running"] is False
    assert not (state_dir / "server.json").exists()
    assert stop_server(state_dir) is False


def test_server_busy_port_and_second_start(labelstudio_template: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy_port = blocker.getsockname()[1]

        first = start_server(state_dir, port=busy_port, template_dir=labelstudio_template)
        try:
            second = start_server(state_dir, port=busy_port, template_dir=labelstudio_template)
            real_port = int(first.url.rsplit(":", 1)[1])
            health = requests.get(f"{first.url}/health", timeout=5)

            assert real_port != busy_port
            assert health.status_code == 200
            assert second == first
        finally:
            stop_server(state_dir)


def test_server_stale_record_replaced(labelstudio_template: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    dead_pid = _dead_pid()
    stale = {"pid": dead_pid, "port": START_PORT, "url": f"http://127.0.0.1:{START_PORT}"}
    (state_dir / "server.json").write_text(json.dumps(stale), encoding="utf-8")

    info = start_server(state_dir, port=START_PORT, template_dir=labelstudio_template)
    try:
        assert info.pid != dead_pid
        assert server_status(state_dir)["running"] is True
    finally:
        stop_server(state_dir)


def test_server_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(LabelStudioError, match=r"prefscout\[server\]"):
        start_server(tmp_path / "state", label_studio_bin=str(tmp_path / "no-such-label-studio"))


def test_server_exit_reports_log(labelstudio_template: Path, tmp_path: Path) -> None:
    executable = _fake_executable(tmp_path, "echo 'fake start failure: database is locked'; exit 3")

    with pytest.raises(LabelStudioError, match="database is locked"):
        start_server(tmp_path / "state", template_dir=labelstudio_template, label_studio_bin=executable)

    assert not (tmp_path / "state" / "server.json").exists()


def test_server_init_failure_reports_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFSCOUT_LABEL_STUDIO_TEMPLATE", raising=False)
    monkeypatch.setattr(server, "environment_template_dir", lambda: tmp_path / "no-template")
    executable = _fake_executable(tmp_path, "echo 'fake init failure'; exit 1")

    with pytest.raises(LabelStudioError, match="fake init failure"):
        start_server(tmp_path / "state", label_studio_bin=executable)

    assert read_credentials(tmp_path / "state") is None


def test_server_start_timeout(labelstudio_template: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "fake.pid"
    executable = _fake_executable(tmp_path, f"echo $$ > {pid_file}; exec sleep 600")

    with pytest.raises(LabelStudioError, match="start timed out"):
        start_server(tmp_path / "state", template_dir=labelstudio_template, label_studio_bin=executable,
                     timeout=3)

    fake_pid = int(pid_file.read_text(encoding="utf-8"))
    with pytest.raises(ProcessLookupError):
        os.kill(fake_pid, 0)


def test_template_copies_unique_credentials(labelstudio_template: Path, tmp_path: Path) -> None:
    first = copy_template(labelstudio_template, tmp_path / "first")
    second = copy_template(labelstudio_template, tmp_path / "second")
    template = read_credentials(labelstudio_template)

    for key in ("email", "password", "api_key", "secret_key"):
        assert first[key] != second[key], key
        assert first[key] != template[key], key
    assert read_credentials(tmp_path / "first") == first
    assert _file_mode(tmp_path / "first" / "credentials.json") == 0o600


def test_template_copy_old_token_rejected(labelstudio_template: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    info = start_server(state_dir, port=START_PORT, template_dir=labelstudio_template)
    template_key = read_credentials(labelstudio_template)["api_key"]
    try:
        new_key = requests.get(f"{info.url}/api/current-user/whoami", headers={"Authorization": f"Token {info.api_key}"}, timeout=30)
        old_key = requests.get(f"{info.url}/api/current-user/whoami", headers={"Authorization": f"Token {template_key}"}, timeout=30)
        login = _log_in(info.url, read_credentials(state_dir))
    finally:
        stop_server(state_dir)

    assert new_key.status_code == 200
    assert new_key.json()["email"] == read_credentials(state_dir)["email"]
    assert old_key.status_code == 401
    assert login is True


def _log_in(url: str, credentials: dict) -> bool:
    """Log in through the web form with the copied user's new password; True when the server accepts it."""
    session = requests.Session()
    page = session.get(f"{url}/user/login/", timeout=30)
    token = session.cookies.get("csrftoken") or ""
    response = session.post(
        f"{url}/user/login/",
        data={"email": credentials["email"], "password": credentials["password"], "csrfmiddlewaretoken": token},
        headers={"Referer": f"{url}/user/login/"},
        timeout=30,
        allow_redirects=False,
    )
    return page.status_code == 200 and response.status_code == 302 and "/user/login" not in response.headers.get("Location", "")


def test_server_killed_is_reported(
    labelstudio_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    info = start_server(state_dir, port=START_PORT, template_dir=labelstudio_template)
    client = LabelStudioClient(info.url, info.api_key, backoff=30, server_alive=lambda: server_exit_reason(state_dir))
    client.check()

    os.killpg(info.pid, signal.SIGKILL)
    os.waitpid(info.pid, 0)
    status = server_status(state_dir)
    sleeps: list[float] = []
    with monkeypatch.context() as patch:
        patch.setattr(time, "sleep", sleeps.append)
        with pytest.raises(LabelStudioError, match="server exited") as raised:
            client.counts(1)
    stop_server(state_dir)

    assert status["running"] is False
    assert f"process {info.pid}" in status["error"]
    assert "no longer running" in status["error"]
    assert "no longer running" in str(raised.value)
    # No backoff was slept: the dead process was noticed before the first retry.
    assert sleeps == []


def test_cli_status_json_keys(labelstudio_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFSCOUT_LABEL_STUDIO_TEMPLATE", str(labelstudio_template))
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    workspace = str(tmp_path / "ws")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy_port = blocker.getsockname()[1]
        assert main(["labelstudio", "start", "--port", str(busy_port), "--workspace", workspace]) == 0
    started = capsys.readouterr().out
    try:
        assert main(["labelstudio", "status", "--json", "--workspace", workspace]) == 0
        status = json.loads(capsys.readouterr().out)
    finally:
        main(["labelstudio", "stop", "--workspace", workspace])
    capsys.readouterr()
    assert main(["labelstudio", "status", "--json", "--workspace", workspace]) == 1
    stopped = json.loads(capsys.readouterr().out)

    assert f"port {busy_port} is busy" in started
    assert status["url"] in started
    assert {"url", "version", "project_id", "tasks", "annotations"} <= set(status)
    assert status["version"] == "1.23.2"
    assert status["running"] is True
    assert status["url"] != f"http://127.0.0.1:{busy_port}"
    assert stopped["running"] is False
