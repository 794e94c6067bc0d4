"""Response modes: groups of responses to one prompt that give the same answer.

A mode is the value of an answer field when the data has one (for example the normalised final
answer of a maths problem), else a cluster of near-identical embeddings among the prompt's
responses. Mode labels are compared within a prompt only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import ConfigError, InputError

# Cosine similarity at or above which two responses to one prompt share a cluster. With
# all-MiniLM-L6-v2, pairs of responses to one prompt have a median cosine of 0.78 (MT-Bench) and
# 0.70 (PandaLM), and about the closest 10-20% of them reach 0.9. NOTE: other embedding models
# need their own value.
DEFAULT_MODE_THRESHOLD = 0.9


def modes_from_values(values: Sequence[object], response_prompt: np.ndarray) -> np.ndarray:
    """Label responses by their answer value: equal values within one prompt share a mode, (R,) int64.

    A missing answer (None or an empty string) never matches another one, so it forms its own mode.
    """
    response_prompt = np.asarray(response_prompt, dtype=np.int64)
    if len(values) != response_prompt.shape[0]:
        raise InputError(
            f"got {len(values)} answer values for {response_prompt.shape[0]} responses: pass one per response."
        )
    labels: dict[tuple[int, str], int] = {}
    modes = np.empty(len(values), dtype=np.int64)
    for position, (prompt, value) in enumerate(zip(response_prompt.tolist(), values)):
        if value is None or value == "":
            key = (prompt, f"\x00missing-{position}")
        else:
            key = (prompt, str(value))
        modes[position] = labels.setdefault(key, len(labels))
    return modes


def cluster_modes(
    embeddings: np.ndarray, response_prompt: np.ndarray, *, threshold: float = DEFAULT_MODE_THRESHOLD
) -> np.ndarray:
    """Label responses by leader clustering of their embeddings within each prompt, (R,) int64.

    Responses are visited in position order. Each one joins the first earlier cluster leader of its
    prompt with cosine similarity >= `threshold`, else it leads a new cluster, so the labels are
    deterministic and depend on the input order.

    Args:
        embeddings: (R, D) float32, L2-normalised.
        response_prompt: (R,) prompt position of each response.
        threshold: cosine similarity in [-1, 1].
    """
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"mode threshold is {threshold!r}, expected a cosine similarity in [-1, 1].")
    response_prompt = np.asarray(response_prompt, dtype=np.int64)
    modes = np.empty(response_prompt.shape[0], dtype=np.int64)
    next_label = 0

    order = np.argsort(response_prompt, kind="stable")
    boundaries = np.flatnonzero(np.diff(response_prompt[order])) + 1
    for members in np.split(order, boundaries):
        if members.size == 0:
            continue
        similarities = embeddings[members] @ embeddings[members].T
        leaders: list[int] = []
        for row in range(members.size):
            joined = next((leader for leader in leaders if similarities[row, leader] >= threshold), None)
            if joined is None:
                leaders.append(row)
                modes[members[row]] = next_label + len(leaders) - 1
            else:
                modes[members[row]] = modes[members[joined]]
        next_label += len(leaders)
    return modes


def prompt_mode_keys(modes: np.ndarray, response_prompt: np.ndarray) -> np.ndarray:
    """Return one integer per distinct (prompt, mode) combination, (R,) int64, from 0 upwards."""
    keys = np.stack([np.asarray(response_prompt, dtype=np.int64), np.asarray(modes, dtype=np.int64)], axis=1)
    if keys.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def mode_rarity(modes: np.ndarray, response_prompt: np.ndarray) -> np.ndarray:
    """Score each response by 1 - (share of its prompt's responses in its mode), (R,) in [0, 1).

    A response alone in its prompt scores 0.0, because no pair contains it.
    """
    keys = prompt_mode_keys(modes, response_prompt)
    if keys.size == 0:
        return np.empty(0)
    mode_size = np.bincount(keys)[keys]
    prompt_size = np.bincount(np.asarray(response_prompt, dtype=np.int64))[response_prompt]
    return 1.0 - mode_size / prompt_size


def shown_modes(modes: np.ndarray, response_prompt: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Return True for each response whose (prompt, mode) contains a seen response, (R,) bool."""
    keys = prompt_mode_keys(modes, response_prompt)
    if keys.size == 0:
        return np.zeros(0, dtype=bool)
    shown = np.zeros(int(keys.max()) + 1, dtype=bool)
    shown[keys[np.asarray(seen, dtype=bool)]] = True
    return shown[keys]
