"""Shared fixtures: one real Label Studio server per test session, and a fresh project per test.

The first fixture runs ``label-studio init`` once per session (20-70 s) unless the environment variable
PREFSCOUT_LABEL_STUDIO_TEMPLATE names an initialised state dir or the environment has its own template
(``prefscout labelstudio template``, run by ``make venv``). Every server in the session then starts from
a copy of that template with its own credentials, which takes a few seconds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from connectors.labelstudio.client import LabelStudioClient
from connectors.labelstudio.server import (
    TEMPLATE_ENV_VAR,
    ServerInfo,
    find_executable,
    initialise_state_dir,
    start_server,
    stop_server,
)
from connectors.labelstudio.template import environment_template_dir, is_initialised
from engine.errors import LabelStudioError


@pytest.fixture(scope="session")
def labelstudio_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of an initialised Label Studio state dir that servers in this session copy."""
    configured = os.environ.get(TEMPLATE_ENV_VAR)
    if configured:
        return Path(configured)
    if is_initialised(environment_template_dir()):
        return environment_template_dir()

    try:
        find_executable()
    except LabelStudioError as error:
        pytest.skip(str(error))

    template = tmp_path_factory.mktemp("labelstudio-template")
    initialise_state_dir(template)
    return template


@pytest.fixture(scope="session")
def labelstudio_server(
    labelstudio_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerInfo]:
    """A Label Studio server started from the session template, stopped at the end of the session."""
    state_dir = tmp_path_factory.mktemp("labelstudio-server")
    info = start_server(state_dir, template_dir=labelstudio_template)
    try:
        yield info
    finally:
        stop_server(state_dir)


@pytest.fixture
def labelstudio_project(labelstudio_server: ServerInfo) -> tuple[LabelStudioClient, int]:
    """A client of the session server and the id of a new, empty pairwise project."""
    client = LabelStudioClient(labelstudio_server.url, labelstudio_server.api_key)
    project_id = client.ensure_project(None, title=f"test {uuid.uuid4().hex[:8]}", maximum_annotations=3)
    return client, project_id


@pytest.fixture(scope="session")
def personal_access_token(labelstudio_server: ServerInfo) -> str:
    """The admin's Personal Access Token on the session server (Label Studio allows one per user)."""
    response = requests.post(
        f"{labelstudio_server.url}/api/token/",
        headers={"Authorization": f"Token {labelstudio_server.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["token"]
