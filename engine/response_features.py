"""Response modes and preference-model features, built the same way for `prefscout round` and the simulator.

Both callers turn their responses into the optional `CandidatePool.modes` and `CandidatePool.features`
arrays through these functions, so a strategy gets the same inputs offline and in a real round.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from acquisition.modes import DEFAULT_MODE_THRESHOLD, cluster_modes, modes_from_values
from engine.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

# Oracle fields that must never become modes or features, because strategies would then read them.
ORACLE_FIELDS = frozenset({"correct", "gold_answer"})


def check_mode_field(mode_field: str | None, option: str = "--mode-field") -> None:
    """Raise ConfigError when `mode_field` names an oracle field. The message names the setting `option`."""
    if mode_field in ORACLE_FIELDS:
        raise ConfigError(
            f"{option} {mode_field!r} is an oracle field, which acquisition must never read: "
            "use an answer field such as answer_key."
        )


def response_modes(
    embeddings: np.ndarray,
    response_prompt: np.ndarray,
    metadata: Sequence[Mapping[str, Any]],
    *,
    mode_field: str | None,
    threshold: float = DEFAULT_MODE_THRESHOLD,
    option: str = "--mode-field",
) -> np.ndarray:
    """Label each response's mode, (R,) int64: its `mode_field` value, else its embedding cluster.

    Args:
        embeddings: (R, D) float32, L2-normalised.
        response_prompt: (R,) prompt id or position of each response.
        metadata: (R,) the other fields of each response; read only when `mode_field` is set.
        mode_field: metadata field naming a response's answer, or None for embedding clusters.
        threshold: cosine similarity that joins two responses in one cluster.
        option: the setting that chose `mode_field`, named in error messages.

    Raises ConfigError when `mode_field` is an oracle field, and InputError when no response has it.
    """
    if mode_field is None:
        return cluster_modes(embeddings, response_prompt, threshold=threshold)
    check_mode_field(mode_field, option)
    values = [row.get(mode_field) for row in metadata]
    if all(value is None for value in values):
        raise InputError(f"no response has the mode field {mode_field!r}: check {option}.")
    missing = sum(1 for value in values if value is None or (isinstance(value, str) and not value.strip()))
    if missing:
        logger.warning(
            "%d of %d responses have no value for the mode field %r: each of them is its own mode, "
            "so it counts as rare; fill the field or leave those responses out",
            missing,
            len(values),
            mode_field,
        )
    return modes_from_values(values, response_prompt)


def generator_features(embeddings: np.ndarray, models: list[str | None]) -> np.ndarray:
    """Join the embeddings with a one-hot of each response's generator model, (R, D + G) float32.

    A response without a model gets zeros, so the model learns one reward offset per generator.
    Columns follow the sorted model names, so they depend only on the set of names given.
    """
    names = sorted({name for name in models if name is not None})
    column = {name: index for index, name in enumerate(names)}
    one_hot = np.zeros((len(models), len(names)), dtype=np.float32)
    for row, name in enumerate(models):
        if name is not None:
            one_hot[row, column[name]] = 1.0
    return np.concatenate([embeddings.astype(np.float32), one_hot], axis=1)
