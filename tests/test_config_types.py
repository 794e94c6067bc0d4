"""Types of config.json values are checked when the config is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.workspace import Workspace


def write_config(tmp_path: Path, section: dict) -> Workspace:
    workspace = Workspace(tmp_path)
    workspace.create()
    workspace.config_path.write_text(json.dumps({"round": section}), encoding="utf-8")
    return workspace


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("novelty_weight", "0.3"),
        ("novelty_weight", True),
        ("max_pairs_per_prompt", "2"),
        ("mode_threshold", "x"),
        ("optimism", "no"),
        ("generator_feature", "yes"),
        ("policy_batch_size", "8"),
        ("policy_batch_size", 8.5),
        ("mode_field", 3),
    ],
)
def test_config_rejects_wrong_type(tmp_path: Path, key: str, value: object) -> None:
    workspace = write_config(tmp_path, {key: value})
    with pytest.raises(ConfigError, match=f"round.{key} is"):
        workspace.load_config()


@pytest.mark.parametrize(
    ("key", "value"),
    [("novelty_weight", None), ("novelty_weight", 1), ("mode_threshold", 0.8), ("mode_field", None), ("optimism", False)],
)
def test_config_accepts_declared_type(tmp_path: Path, key: str, value: object) -> None:
    workspace = write_config(tmp_path, {key: value})
    assert getattr(workspace.load_config().round, key) == value
