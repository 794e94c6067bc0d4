"""Tests of response modes, mode-aware novelty, optimism and policy unlikelihood in acquisition."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition import CandidatePool, select_batch
from acquisition.modes import cluster_modes, mode_rarity, modes_from_values, prompt_mode_keys, shown_modes
from acquisition.scores import (
    OPTIMISM_FLOOR,
    pair_novelty,
    rank_within_prompt,
    response_novelty_scores,
    reward_optimism,
)
from engine.errors import ConfigError, InputError
from engine.preference import PreferenceModel
from engine.response_features import response_modes

DIM = 8


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def one_prompt_pool(modes: list[int], seen: list[bool] | None = None, seed: int = 0) -> CandidatePool:
    """Every pair of the responses to one prompt, with the given mode labels."""
    n = len(modes)
    first, second = np.triu_indices(n, k=1)
    return CandidatePool(
        unit_rows(np.random.default_rng(seed), n),
        np.zeros(n, dtype=np.int64),
        first.astype(np.int64),
        second.astype(np.int64),
        np.zeros(n, dtype=bool) if seen is None else np.asarray(seen),
        modes=np.asarray(modes),
    )


def test_modes_from_values_group_within_prompt() -> None:
    modes = modes_from_values(["7", "7", "8", "7"], np.array([0, 0, 0, 1]))
    assert modes[0] == modes[1]
    assert modes[0] != modes[2]
    assert modes[3] != modes[0]


def test_modes_from_values_missing_never_match() -> None:
    modes = modes_from_values([None, None, ""], np.zeros(3, dtype=np.int64))
    assert np.unique(modes).size == 3


def test_modes_from_values_length_mismatch() -> None:
    with pytest.raises(InputError, match="one per response"):
        modes_from_values(["a"], np.zeros(2, dtype=np.int64))


def test_cluster_modes_joins_near_duplicates() -> None:
    base = unit_rows(np.random.default_rng(1), 2)
    near = base[0] + 0.01 * base[1]
    embeddings = np.stack([base[0], near / np.linalg.norm(near), base[1]]).astype(np.float32)
    modes = cluster_modes(embeddings, np.zeros(3, dtype=np.int64), threshold=0.95)
    assert modes[0] == modes[1]
    assert modes[2] != modes[0]


def test_cluster_modes_separate_prompts() -> None:
    vector = unit_rows(np.random.default_rng(2), 1)
    embeddings = np.repeat(vector, 2, axis=0)
    modes = cluster_modes(embeddings, np.array([0, 1]))
    assert modes[0] != modes[1]


def test_cluster_modes_rejects_threshold() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        cluster_modes(unit_rows(np.random.default_rng(0), 2), np.zeros(2, dtype=np.int64), threshold=1.5)


def test_mode_rarity_values() -> None:
    rarity = mode_rarity(np.array([0, 0, 0, 1]), np.zeros(4, dtype=np.int64))
    np.testing.assert_allclose(rarity, [0.25, 0.25, 0.25, 0.75])


def test_mode_rarity_single_response_zero() -> None:
    assert mode_rarity(np.array([5]), np.array([0]))[0] == 0.0


def test_prompt_mode_keys_distinct_per_prompt() -> None:
    keys = prompt_mode_keys(np.array([0, 0, 0]), np.array([0, 1, 0]))
    assert keys[0] == keys[2]
    assert keys[0] != keys[1]


def test_shown_modes_marks_whole_mode() -> None:
    shown = shown_modes(np.array([0, 0, 1]), np.zeros(3, dtype=np.int64), np.array([True, False, False]))
    assert shown.tolist() == [True, True, False]


def test_mode_novelty_prefers_rare_unshown() -> None:
    pool = one_prompt_pool([0, 0, 0, 0, 1, 2], seen=[True, False, False, False, False, False])
    novelty = response_novelty_scores(pool)
    assert novelty[4] > novelty[1]
    assert novelty[1] == 0.0


def test_mode_pair_novelty_same_mode_lower() -> None:
    pool = one_prompt_pool([0, 0, 1, 2])
    scores = pair_novelty(pool)
    same = np.flatnonzero((pool.pair_a == 0) & (pool.pair_b == 1))[0]
    different = np.flatnonzero((pool.pair_a == 2) & (pool.pair_b == 3))[0]
    assert scores[different] > scores[same]


def test_mode_pair_novelty_two_new_modes_higher() -> None:
    pool = one_prompt_pool([0, 1, 2, 3], seen=[True, False, False, False])
    scores = pair_novelty(pool)
    with_shown = np.flatnonzero((pool.pair_a == 0) & (pool.pair_b == 1))[0]
    both_new = np.flatnonzero((pool.pair_a == 1) & (pool.pair_b == 2))[0]
    assert scores[both_new] > scores[with_shown]


def test_rank_within_prompt_values() -> None:
    ranks = rank_within_prompt(np.array([3.0, 1.0, 2.0, 9.0]), np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(ranks, [1.0, 0.0, 0.5, 1.0])


def test_reward_optimism_ranks_better_response_higher() -> None:
    rng = np.random.default_rng(3)
    pool = one_prompt_pool([0, 1, 2, 3], seed=3)
    true_weights = rng.normal(size=DIM) * 5
    diffs = pool.embeddings[pool.pair_a] - pool.embeddings[pool.pair_b]
    labels = (diffs @ true_weights > 0).astype(float)
    model = PreferenceModel(n_members=4, l2=0.01, seed=0).fit(np.repeat(diffs, 20, axis=0), np.repeat(labels, 20))
    optimism = reward_optimism(pool, model)
    best = int(np.argmax(pool.embeddings @ true_weights))
    assert optimism[best] == 1.0


def fixed_model(weights: np.ndarray) -> PreferenceModel:
    """A model whose members all have the given weights (D,), fitted first for its attributes."""
    pool = one_prompt_pool([0, 1, 2, 3])
    diffs = pool.embeddings[pool.pair_a] - pool.embeddings[pool.pair_b]
    model = PreferenceModel(n_members=4, seed=0).fit(diffs, np.ones(diffs.shape[0]))
    model._weights = np.tile(weights, (4, 1))
    return model


def test_reward_optimism_best_minority_answer() -> None:
    """The response every member rates best gets 1, the others the floor."""
    pool = one_prompt_pool([0, 0, 0, 1])
    model = fixed_model(pool.embeddings[3].astype(np.float64))
    optimism = reward_optimism(pool, model)
    assert optimism[3] == 1.0
    assert optimism[:3].max() == pytest.approx(OPTIMISM_FLOOR)


def test_optimism_scales_pair_of_rarer_response() -> None:
    pool = one_prompt_pool([0, 0, 1, 2])
    plain = pair_novelty(pool)
    optimism = np.array([1.0, 1.0, 0.5, 1.0])
    scaled = pair_novelty(pool, optimism=optimism)
    pair = np.flatnonzero((pool.pair_a == 0) & (pool.pair_b == 2))[0]
    assert scaled[pair] == pytest.approx(0.5 * plain[pair])


def test_policy_logprob_reorders_novelty() -> None:
    base = one_prompt_pool([0, 1, 2, 3])
    with_policy = CandidatePool(
        base.embeddings, base.response_prompt, base.pair_a, base.pair_b, base.seen,
        modes=base.modes, policy_logprob=np.array([-0.1, -0.2, -0.3, -5.0]),
    )
    novelty = response_novelty_scores(with_policy)
    assert novelty[3] > novelty[0]


def test_pool_rejects_bad_modes_shape() -> None:
    base = one_prompt_pool([0, 1, 2])
    with pytest.raises(InputError, match="modes"):
        CandidatePool(base.embeddings, base.response_prompt, base.pair_a, base.pair_b, base.seen, modes=np.zeros(2, np.int64))


def test_pool_rejects_nan_features() -> None:
    base = one_prompt_pool([0, 1, 2])
    features = np.full((3, 4), np.nan)
    with pytest.raises(InputError, match="features"):
        CandidatePool(base.embeddings, base.response_prompt, base.pair_a, base.pair_b, base.seen, features=features)


def test_pool_features_set_model_dimension() -> None:
    base = one_prompt_pool([0, 1, 2])
    features = np.ones((3, 5), dtype=np.float32)
    pool = CandidatePool(base.embeddings, base.response_prompt, base.pair_a, base.pair_b, base.seen, features=features)
    assert pool.dim == 5


@pytest.mark.parametrize("name", ["hybrid", "novelty", "uncertainty", "stochastic", "random"])
def test_strategies_run_with_modes_and_features(name: str) -> None:
    rng = np.random.default_rng(4)
    response_prompt = np.repeat(np.arange(6), 5)
    first, second = [], []
    for prompt in range(6):
        members = np.flatnonzero(response_prompt == prompt)
        i, j = np.triu_indices(members.size, k=1)
        first.extend(members[i])
        second.extend(members[j])
    embeddings = unit_rows(rng, response_prompt.size)
    features = np.concatenate([embeddings, np.eye(3, dtype=np.float32)[rng.integers(0, 3, response_prompt.size)]], axis=1)
    pool = CandidatePool(
        embeddings, response_prompt, np.array(first), np.array(second), np.zeros(response_prompt.size, bool),
        modes=rng.integers(0, 3, response_prompt.size), features=features,
    )
    diffs = features[pool.pair_a[:20]] - features[pool.pair_b[:20]]
    model = PreferenceModel(n_members=3, seed=0).fit(diffs, (rng.random(20) < 0.5).astype(float))
    selection = select_batch(name, pool, 7, np.random.default_rng(0), model=model)
    assert len(selection) == 7
    assert np.isfinite(selection.scores).all()


def test_response_modes_warns_missing_values(caplog: pytest.LogCaptureFixture) -> None:
    pool = one_prompt_pool([0, 1, 2, 3])
    metadata = [{"answer_key": "4"}, {"answer_key": "4"}, {"answer_key": ""}, {}]
    with caplog.at_level("WARNING"):
        response_modes(pool.embeddings, pool.response_prompt, metadata, mode_field="answer_key")
    assert "2 of 4 responses have no value" in caplog.text
