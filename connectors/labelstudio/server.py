"""Start, stop and inspect a Label Studio server that prefscout manages in a state dir.

Layout of a state dir:

- ``data/``: the Label Studio data dir (SQLite database, media, and the XDG config, data and cache dirs,
  so that nothing is written to the home folder).
- ``credentials.json``: admin email, password, legacy API token and Django ``SECRET_KEY``, mode 0600,
  unique to the state dir even when its data was copied from a template.
- ``server.json``: pid, port and URL of the running server, removed by `stop_server`.
- ``server.log``: the server's stdout and stderr.

The server binds to 127.0.0.1 only, and its environment turns off Sentry, analytics and the version check
so that it sends no traffic to other hosts. Behaviour described here was measured with label-studio 1.23.2.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from connectors.labelstudio.template import (
    CREDENTIALS_FILE,
    DATA_DIR,
    DATABASE_FILE,
    copy_template,
    environment_template_dir,
    is_initialised,
    new_credentials,
)
from connectors.labelstudio.template import read_json as _read_json
from connectors.labelstudio.template import write_json as _write_json
from engine.errors import LabelStudioError

logger = logging.getLogger(__name__)

TEMPLATE_ENV_VAR = "PREFSCOUT_LABEL_STUDIO_TEMPLATE"
INSTALL_HINT = "pip install 'prefscout[server]'"

_DATA_DIR = DATA_DIR
_CREDENTIALS_FILE = CREDENTIALS_FILE
_SERVER_FILE = "server.json"
_LOG_FILE = "server.log"
_DATABASE_FILE = DATABASE_FILE

_HOST = "127.0.0.1"
_MAX_PORT_SCAN = 100
_POLL_INTERVAL = 0.5
_LOG_TAIL_LINES = 30
# Django's runserver prints this line once the socket is bound; it carries the real port.
_STARTED_PATTERN = re.compile(r"Starting development server at http://[^:/\s]+:(\d+)/")
# Label Studio reads these from the environment and would override the command line or prompt for a user.
_INHERITED_VARIABLES_TO_DROP = ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "LABEL_STUDIO_HOST")


@dataclass(frozen=True)
class ServerInfo:
    """Address and admin credentials of a running Label Studio server."""

    url: str
    api_key: str = field(repr=False)
    pid: int | None
    state_dir: Path
    # The port asked for, when it was busy and another one is used; not part of the server's identity.
    requested_port: int | None = field(default=None, compare=False)


def start_server(
    state_dir: Path,
    *,
    port: int = 8080,
    timeout: float = 180.0,
    label_studio_bin: str | None = None,
    template_dir: Path | None = None,
) -> ServerInfo:
    """Start the Label Studio server of `state_dir`, or return the one already running there.

    On the first start the state dir is initialised by copying a template: `template_dir`, else the
    one named by ``PREFSCOUT_LABEL_STUDIO_TEMPLATE``, else the environment's own template when
    `prefscout labelstudio template` has built it. The copy gets new credentials. Without any template,
    ``label-studio init`` creates the state dir (about a minute). The server listens on 127.0.0.1 at the
    first free port at or above `port`; `ServerInfo.requested_port` is set when that is not `port`.

    Raises LabelStudioError when the executable is missing, initialisation fails, or the server exits or
    does not respond to ``/health`` within `timeout` seconds. The message then contains the end of server.log.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout

    running = _running_server(state_dir)
    if running is not None:
        logger.info("Label Studio already running at %s (pid %d)", running.url, running.pid)
        return running

    executable = find_executable(label_studio_bin)
    credentials = _ensure_initialised(state_dir, executable, template_dir, timeout=timeout)
    free_port = _first_free_port(port)
    log_offset = _log_size(state_dir)
    process = _launch(state_dir, executable, credentials, free_port)
    real_port = _wait_until_ready(state_dir, process, free_port, log_offset, deadline, timeout)

    url = f"http://{_HOST}:{real_port}"
    _write_json(state_dir / _SERVER_FILE, {"pid": process.pid, "port": real_port, "url": url}, mode=0o644)
    logger.info("Label Studio started at %s (pid %d, state dir %s)", url, process.pid, state_dir)
    return ServerInfo(
        url=url,
        api_key=credentials["api_key"],
        pid=process.pid,
        state_dir=state_dir,
        requested_port=port if real_port != port else None,
    )


def stop_server(state_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop the server recorded in `state_dir`/server.json and remove that file.

    Sends SIGINT, then SIGTERM and finally SIGKILL when the process outlives `timeout` seconds for each
    signal. Returns True if a live server process was stopped, False if none was running.
    """
    state_dir = Path(state_dir).resolve()
    record = _read_json(state_dir / _SERVER_FILE)
    if record is None:
        return False

    pid = record.get("pid")
    stopped = False
    if isinstance(pid, int) and _is_label_studio_process(pid):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            logger.info("Sending %s to Label Studio (pid %d)", sig.name, pid)
            if not _send_signal(pid, sig):
                break
            if _wait_for_exit(pid, timeout):
                break
        stopped = True

    (state_dir / _SERVER_FILE).unlink(missing_ok=True)
    return stopped


def _send_signal(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group that `start_server` created for `pid`, or only `pid` if there is none."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        pass
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def server_status(state_dir: Path) -> dict:
    """Describe the server of `state_dir`.

    Keys: ``running`` (bool), ``url``, ``pid``, ``port`` (None when no server.json exists), ``version``
    (from ``/api/version``, None when the server does not respond), ``state_dir``, ``initialised`` and
    ``error``: None, or why a server that server.json records is not running or not responding.
    """
    state_dir = Path(state_dir).resolve()
    record = _read_json(state_dir / _SERVER_FILE) or {}
    credentials = read_credentials(state_dir)
    status = {
        "running": False,
        "url": record.get("url"),
        "pid": record.get("pid"),
        "port": record.get("port"),
        "version": None,
        "state_dir": str(state_dir),
        "initialised": credentials is not None,
        "error": None,
    }
    if not record:
        return status

    status["error"] = server_exit_reason(state_dir)
    if status["error"] is not None:
        return status
    url = record.get("url")
    status["running"] = isinstance(url, str) and _health_ok(url)
    if not status["running"]:
        status["error"] = (
            f"Label Studio process {record.get('pid')} runs but {url}/health does not respond; "
            f"wait for it, or stop it with `prefscout labelstudio stop` and start it again"
        )
    elif credentials is not None:
        status["version"] = _fetch_version(url, credentials["api_key"])
    return status


def server_exit_reason(state_dir: Path) -> str | None:
    """Return why the server recorded in `state_dir`/server.json is gone, or None while its process lives.

    The reason names the pid and quotes the end of server.log, so a crash is reported instead of
    being waited on. Also None when no server is recorded.
    """
    state_dir = Path(state_dir).resolve()
    record = _read_json(state_dir / _SERVER_FILE)
    if record is None:
        return None
    pid = record.get("pid")
    if isinstance(pid, int) and _is_label_studio_process(pid):
        return None
    return (
        f"Label Studio process {pid} (started for {state_dir}) is no longer running; it exited or was "
        f"killed. Start it again with `prefscout labelstudio start`. Last lines of "
        f"{state_dir / _LOG_FILE}:\n{_log_tail(state_dir, 10)}"
    )


def read_credentials(state_dir: Path) -> dict | None:
    """Return the admin credentials of `state_dir` (email, password, api_key, secret_key), or None."""
    return _read_json(Path(state_dir) / _CREDENTIALS_FILE)


def initialise_state_dir(
    state_dir: Path, *, label_studio_bin: str | None = None, timeout: float = 300.0
) -> dict:
    """Run ``label-studio init`` in `state_dir` unless it is already initialised; return its credentials.

    The result can serve as a template for `start_server`, which copies it in place of a slow init.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    executable = find_executable(label_studio_bin)
    credentials = read_credentials(state_dir)
    if credentials is not None and is_initialised(state_dir):
        return credentials
    return _run_init(state_dir, executable, timeout=timeout)


def build_environment_template(*, label_studio_bin: str | None = None, timeout: float = 300.0) -> Path:
    """Build this environment's template (see `environment_template_dir`) unless it exists; return its path.

    The init runs in a temporary folder beside the target, which is then renamed into place, so an
    interrupted or concurrent build never leaves a half-initialised template.
    """
    target = environment_template_dir()
    if is_initialised(target):
        return target
    executable = find_executable(label_studio_bin)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as error:
        raise LabelStudioError(
            f"cannot write the Label Studio template under {target.parent}: {error}; the environment is "
            f"read-only, so set {TEMPLATE_ENV_VAR} to a template built with initialise_state_dir elsewhere"
        ) from error
    try:
        _run_init(staging, executable, timeout=timeout)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_initialised(target):
                raise
            logger.info("Another process built %s first; keeping that one", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("Built the Label Studio template %s", target)
    return target


def _running_server(state_dir: Path) -> ServerInfo | None:
    """Return the server recorded in server.json if it is alive and healthy; remove a stale record."""
    record = _read_json(state_dir / _SERVER_FILE)
    if record is None:
        return None

    pid = record.get("pid")
    url = record.get("url")
    credentials = read_credentials(state_dir)
    alive = isinstance(pid, int) and _is_label_studio_process(pid)
    if alive and isinstance(url, str) and credentials is not None and _health_ok(url):
        return ServerInfo(url=url, api_key=credentials["api_key"], pid=pid, state_dir=state_dir)

    if alive:
        raise LabelStudioError(
            f"Label Studio process {pid} from {state_dir / _SERVER_FILE} is running but {url}/health does "
            f"not answer; stop it with stop_server({str(state_dir)!r}) and start again"
        )
    logger.info("Removing stale %s (pid %s is not running)", state_dir / _SERVER_FILE, pid)
    (state_dir / _SERVER_FILE).unlink(missing_ok=True)
    return None


def find_executable(label_studio_bin: str | None = None) -> str:
    """Return the path of the label-studio executable.

    The search order is `label_studio_bin` (a path or a name on PATH), then the executable next to the
    running Python interpreter, then PATH. Raises LabelStudioError with the install command when none exists.
    """
    if label_studio_bin is not None:
        candidate = shutil.which(label_studio_bin)
        if candidate is None:
            raise LabelStudioError(
                f"Label Studio executable {label_studio_bin!r} not found or not executable; "
                f"install it with {INSTALL_HINT} or pass the path of an existing one"
            )
        return candidate

    beside_python = Path(sys.executable).parent / "label-studio"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)

    on_path = shutil.which("label-studio")
    if on_path is None:
        raise LabelStudioError(
            f"Label Studio executable 'label-studio' not found next to {sys.executable} or on PATH; "
            f"install it with {INSTALL_HINT}"
        )
    return on_path


def _ensure_initialised(
    state_dir: Path, executable: str, template_dir: Path | None, *, timeout: float
) -> dict:
    """Return the credentials of `state_dir`, initialising it from a template or by ``label-studio init``."""
    credentials = read_credentials(state_dir)
    if credentials is not None and is_initialised(state_dir):
        return credentials

    if template_dir is None and os.environ.get(TEMPLATE_ENV_VAR):
        template_dir = Path(os.environ[TEMPLATE_ENV_VAR])
    if template_dir is None and is_initialised(environment_template_dir()):
        template_dir = environment_template_dir()
    if template_dir is not None:
        return copy_template(Path(template_dir), state_dir)

    logger.warning(
        "No Label Studio template found (build one with `prefscout labelstudio template`); running "
        "label-studio init, which takes about a minute"
    )
    return _run_init(state_dir, executable, timeout=timeout)


def _run_init(state_dir: Path, executable: str, *, timeout: float) -> dict:
    """Create the Label Studio database and admin user with generated credentials."""
    credentials = new_credentials()
    data_dir = state_dir / _DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        executable, "init",
        "--data-dir", str(data_dir),
        "--username", credentials["email"],
        "--password", credentials["password"],
        "--user-token", credentials["api_key"],
        "--enable-legacy-api-token",
        "--quiet",
    ]

    logger.info("Initialising Label Studio in %s (can take a minute on first use)", data_dir)
    started = time.monotonic()
    with open(state_dir / _LOG_FILE, "ab") as log:
        try:
            result = subprocess.run(
                command,
                env=_server_environment(data_dir, credentials["secret_key"]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LabelStudioError(
                f"label-studio init in {data_dir} timed out after {timeout:.0f} s; "
                f"last lines of {state_dir / _LOG_FILE}:\n{_log_tail(state_dir)}"
            ) from None

    if result.returncode != 0 or not (data_dir / _DATABASE_FILE).is_file():
        raise LabelStudioError(
            f"label-studio init in {data_dir} failed with exit status {result.returncode}; "
            f"last lines of {state_dir / _LOG_FILE}:\n{_log_tail(state_dir)}"
        )
    _write_json(state_dir / _CREDENTIALS_FILE, credentials, mode=0o600)
    logger.info("Initialised Label Studio in %s in %.1f s", data_dir, time.monotonic() - started)
    return credentials


def _server_environment(data_dir: Path, secret_key: str) -> dict[str, str]:
    """Build an environment that keeps Label Studio inside `data_dir` and stops it from calling out."""
    environment = {
        name: value for name, value in os.environ.items() if name not in _INHERITED_VARIABLES_TO_DROP
    }
    environment.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "DJANGO_DB": "sqlite",
            "XDG_CONFIG_HOME": str(data_dir / "xdg-config"),
            "XDG_DATA_HOME": str(data_dir / "xdg-data"),
            "XDG_CACHE_HOME": str(data_dir / "xdg-cache"),
            "SECRET_KEY": secret_key,
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
            # Without this the "Starting development server" line sits in a buffer and the port stays unknown.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environment


def _first_free_port(port: int) -> int:
    """Return the first port at or above `port` that nothing listens on at 127.0.0.1 or localhost."""
    if not 1 <= port <= 65535:
        raise LabelStudioError(f"Label Studio port {port} is out of range; expected 1-65535")

    for candidate in range(port, min(port + _MAX_PORT_SCAN, 65536)):
        if _port_is_free(candidate):
            if candidate != port:
                logger.info("Port %d is busy, starting Label Studio on port %d", port, candidate)
            return candidate
    raise LabelStudioError(
        f"no free port in {port}-{port + _MAX_PORT_SCAN - 1} on {_HOST}; pass another start port"
    )


def _port_is_free(port: int) -> bool:
    # Label Studio itself tests a port by connecting to localhost, so test both ways.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(("localhost", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((_HOST, port))
        except OSError:
            return False
    return True


def _launch(state_dir: Path, executable: str, credentials: dict, port: int) -> subprocess.Popen:
    """Start ``label-studio start`` detached from this process, with its output appended to server.log."""
    data_dir = state_dir / _DATA_DIR
    command = [
        executable, "start",
        "--no-browser",
        "--internal-host", _HOST,
        "--port", str(port),
        "--data-dir", str(data_dir),
    ]
    with open(state_dir / _LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            command,
            env=_server_environment(data_dir, credentials["secret_key"]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    logger.info("Launched Label Studio (pid %d) on %s:%d", process.pid, _HOST, port)
    return process


def _wait_until_ready(
    state_dir: Path, process: subprocess.Popen, port: int, log_offset: int, deadline: float, timeout: float
) -> int:
    """Wait until the server prints its port and responds to /health; return the port it really bound.

    The port can differ from `port` when another process took it between the free-port test and the
    start, because Label Studio then moves to the next port without failing. Only server.log after
    `log_offset` is searched, so that lines of earlier runs are ignored.
    """
    log_path = state_dir / _LOG_FILE
    real_port: int | None = None

    while time.monotonic() < deadline:
        exit_status = process.poll()
        if exit_status is not None:
            raise LabelStudioError(
                f"Label Studio exited with status {exit_status} during start-up; "
                f"last lines of {log_path}:\n{_log_tail(state_dir)}"
            )
        if real_port is None:
            real_port = _port_from_log(log_path, log_offset)
            if real_port is not None and real_port != port:
                logger.warning("Label Studio moved from busy port %d to %d", port, real_port)
        if real_port is not None and _health_ok(f"http://{_HOST}:{real_port}"):
            return real_port
        time.sleep(_POLL_INTERVAL)

    _terminate(process)
    raise LabelStudioError(
        f"Label Studio start timed out: no response from {_HOST}:{real_port or port}/health within "
        f"{timeout:.0f} s, so the process was stopped. Raise `timeout` if the machine is slow. "
        f"Last lines of {log_path}:\n{_log_tail(state_dir)}"
    )


def _port_from_log(log_path: Path, offset: int) -> int | None:
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    match = _STARTED_PATTERN.search(text)
    return int(match.group(1)) if match else None


def _terminate(process: subprocess.Popen) -> None:
    """Stop a server that failed to start; it runs in its own process group."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _health_ok(url: str) -> bool:
    try:
        response = requests.get(f"{url}/health", timeout=2)
    except requests.RequestException:
        return False
    return response.status_code == 200


def _fetch_version(url: str, api_key: str) -> str | None:
    try:
        response = requests.get(f"{url}/api/version", headers={"Authorization": f"Token {api_key}"}, timeout=5)
        response.raise_for_status()
        return response.json().get("release")
    except (requests.RequestException, ValueError) as error:
        logger.warning("Could not read the Label Studio version from %s: %s", url, error)
        return None


def _is_label_studio_process(pid: int) -> bool:
    """Return True if `pid` is alive and, where /proc exists, runs label-studio.

    The /proc check guards against a reused pid after a crash or reboot left server.json behind.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False

    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        arguments = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    if _is_zombie(pid):
        return False
    return any(b"label-studio" in argument or b"label_studio" in argument for argument in arguments)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit, reaping it when it is our child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished == pid:
                return True
        except ChildProcessError:
            pass  # Not our child: another process started it, so only its disappearance can be observed.
        if not _is_label_studio_process(pid):
            return True
        time.sleep(0.2)
    return False


def _log_size(state_dir: Path) -> int:
    log_path = state_dir / _LOG_FILE
    return log_path.stat().st_size if log_path.exists() else 0


def _log_tail(state_dir: Path, lines: int = _LOG_TAIL_LINES) -> str:
    log_path = state_dir / _LOG_FILE
    if not log_path.exists():
        return "(no server.log)"
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
