"""Tests of the acquisition library: scorers, selectors, strategies and the registry.

Embeddings are seeded synthetic unit vectors, so no sentence-transformers model is needed. FAISS is
the real faiss-cpu.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from acquisition import (
    CandidatePool,
    Selection,
    bald,
    distance_to_seen,
    get_strategy,
    information_gain,
    k_center_greedy,
    pair_novelty,
    pair_uncertainty,
    predictive_entropy,
    sample_by_score,
    scale_by_rank,
    select_batch,
    select_top_k,
    strategy_names,
    within_prompt_rarity,
)
from engine.errors import ConfigError, InputError, UnknownStrategyError
from engine.preference import PreferenceModel

DIM = 16


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def all_pairs(response_prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of different responses to the same prompt."""
    pair_a, pair_b = [], []
    for prompt in np.unique(response_prompt):
        members = np.flatnonzero(response_prompt == prompt)
        for a, b in itertools.combinations(members, 2):
            pair_a.append(a)
            pair_b.append(b)
    return np.asarray(pair_a, dtype=np.int64), np.asarray(pair_b, dtype=np.int64)


def make_pool(
    seed: int, n_prompts: int = 12, per_prompt: int = 6, n_seen: int = 10, dim: int = DIM
) -> CandidatePool:
    """Clustered responses: most answers of a prompt sit near its mode, a few far from it."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(n_prompts, dim))
    response_prompt = np.repeat(np.arange(n_prompts), per_prompt)
    spread = np.where(rng.random(response_prompt.size) < 0.2, 2.0, 0.3)
    embeddings = normalise(modes[response_prompt] + spread[:, None] * rng.normal(size=(response_prompt.size, dim)))
    pair_a, pair_b = all_pairs(response_prompt)
    seen = np.zeros(response_prompt.size, dtype=bool)
    seen[rng.choice(response_prompt.size, size=min(n_seen, response_prompt.size), replace=False)] = True
    return CandidatePool(embeddings, response_prompt, pair_a, pair_b, seen)


def fit_model(pool: CandidatePool, seed: int) -> PreferenceModel:
    """A model fitted on synthetic Bradley-Terry votes over the pool's pairs."""
    rng = np.random.default_rng(seed)
    true_weights = rng.normal(size=pool.dim) * 2.0
    voted = rng.choice(pool.n_pairs, size=pool.n_pairs // 2, replace=False)
    diffs = pool.embeddings[pool.pair_a[voted]] - pool.embeddings[pool.pair_b[voted]]
    labels = (rng.random(voted.size) < 1.0 / (1.0 + np.exp(-diffs @ true_weights))).astype(np.float64)
    return PreferenceModel(n_members=4, seed=seed).fit(diffs, labels)


@pytest.fixture(scope="module")
def pool() -> CandidatePool:
    return make_pool(seed=0)


@pytest.fixture(scope="module")
def model(pool: CandidatePool) -> PreferenceModel:
    return fit_model(pool, seed=1)


def assert_same_selection(first: Selection, second: Selection) -> None:
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.novelty, second.novelty)
    np.testing.assert_array_equal(first.uncertainty, second.uncertainty)
    np.testing.assert_array_equal(first.propensity, second.propensity)


# Contract over every registered strategy.


@pytest.mark.parametrize("with_model", [False, True], ids=["cold", "model"])
@pytest.mark.parametrize("k", [1, 7, 40, 10_000])
@pytest.mark.parametrize("name", strategy_names())
def test_strategy_contract(name: str, k: int, with_model: bool, pool: CandidatePool, model: PreferenceModel) -> None:
    fitted = model if with_model else None
    selection = select_batch(name, pool, k, np.random.default_rng(7), model=fitted)
    expected = min(k, pool.n_pairs)

    assert selection.indices.dtype == np.int64
    assert len(selection) == expected
    assert np.unique(selection.indices).size == expected
    assert selection.indices.min() >= 0
    assert selection.indices.max() < pool.n_pairs
    assert np.isfinite(selection.scores).all()
    for field in (selection.scores, selection.novelty, selection.uncertainty, selection.propensity):
        assert field.shape == (expected,)

    again = select_batch(name, pool, k, np.random.default_rng(7), model=fitted)
    assert_same_selection(selection, again)


@pytest.mark.parametrize("name", strategy_names())
def test_strategy_empty_pool(name: str) -> None:
    embeddings = normalise(np.eye(3, DIM))
    empty = CandidatePool(
        embeddings, np.arange(3), np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(3, bool)
    )
    selection = select_batch(name, empty, 5, np.random.default_rng(0))
    assert len(selection) == 0


@pytest.mark.parametrize("name", strategy_names())
def test_strategy_k_zero(name: str, pool: CandidatePool) -> None:
    assert len(select_batch(name, pool, 0, np.random.default_rng(0))) == 0


@pytest.mark.parametrize("name", strategy_names())
def test_strategy_pool_smaller_than_k(name: str) -> None:
    small = make_pool(seed=3, n_prompts=2, per_prompt=3)
    selection = select_batch(name, small, 50, np.random.default_rng(0))
    assert sorted(selection.indices.tolist()) == list(range(small.n_pairs))


def test_one_response_per_prompt_has_no_pairs() -> None:
    response_prompt = np.arange(4)
    pair_a, pair_b = all_pairs(response_prompt)
    single = CandidatePool(normalise(np.eye(4, DIM)), response_prompt, pair_a, pair_b, np.zeros(4, bool))
    assert single.n_pairs == 0
    assert len(select_batch("hybrid", single, 3, np.random.default_rng(0))) == 0


def test_unknown_strategy_lists_names(pool: CandidatePool) -> None:
    with pytest.raises(UnknownStrategyError) as error:
        select_batch("bandit", pool, 5, np.random.default_rng(0))
    for name in strategy_names():
        assert name in str(error.value)


def test_get_strategy_unknown_name() -> None:
    with pytest.raises(UnknownStrategyError, match="'bandit'"):
        get_strategy("bandit")


def test_builtin_strategies_registered() -> None:
    assert {"random", "novelty", "uncertainty", "hybrid", "stochastic"} <= set(strategy_names())


def test_unknown_option_lists_options(pool: CandidatePool) -> None:
    with pytest.raises(ConfigError, match="max_per_prompt"):
        select_batch("hybrid", pool, 5, np.random.default_rng(0), max_per_promt=3)


@pytest.mark.parametrize("k", [-1, 2.5, True])
def test_select_batch_invalid_k(k: object, pool: CandidatePool) -> None:
    with pytest.raises(ConfigError, match="k is"):
        select_batch("random", pool, k, np.random.default_rng(0))  # type: ignore[arg-type]


def test_select_batch_rejects_legacy_random_state(pool: CandidatePool) -> None:
    with pytest.raises(ConfigError, match="numpy.random.Generator"):
        select_batch("random", pool, 5, np.random.RandomState(0))  # type: ignore[arg-type]


def test_select_batch_invalid_uncertainty_option(pool: CandidatePool, model: PreferenceModel) -> None:
    with pytest.raises(ConfigError, match="bald"):
        select_batch("hybrid", pool, 5, np.random.default_rng(0), model=model, uncertainty="margin")


def test_cold_start_fields(pool: CandidatePool) -> None:
    """With all votes ties the caller has no decisive vote, so it passes model=None."""
    selection = select_batch(
        "uncertainty", pool, 5, np.random.default_rng(0), model=None, uncertainty="bald"
    )
    assert np.isfinite(selection.novelty).all()
    assert np.isnan(selection.uncertainty).all()


def test_cold_start_variance_uses_prior(pool: CandidatePool) -> None:
    selection = select_batch("uncertainty", pool, 5, np.random.default_rng(0), model=None)
    assert np.isfinite(selection.uncertainty).all()


def test_hybrid_with_model_fields(pool: CandidatePool, model: PreferenceModel) -> None:
    selection = select_batch("hybrid", pool, 6, np.random.default_rng(0), model=model, novelty_weight=0.5)
    # Each pick comes from one part of the batch: novelty (3 of 6) or variance reduction.
    assert (np.isfinite(selection.novelty) != np.isfinite(selection.uncertainty)).all()
    assert np.isfinite(selection.novelty).sum() == 3
    assert np.isnan(selection.propensity).all()
    assert selection.scores.min() >= 0.0


def test_hybrid_per_pair_measure_fields(pool: CandidatePool, model: PreferenceModel) -> None:
    selection = select_batch(
        "hybrid", pool, 5, np.random.default_rng(0), model=model, uncertainty="bald"
    )
    assert np.isfinite(selection.uncertainty).all()


def test_stochastic_rejects_variance(pool: CandidatePool, model: PreferenceModel) -> None:
    with pytest.raises(ConfigError, match="whole batch"):
        select_batch("stochastic", pool, 5, np.random.default_rng(0), model=model, uncertainty="variance")


def test_model_dimension_mismatch(pool: CandidatePool) -> None:
    other = make_pool(seed=5, dim=DIM + 4)
    with pytest.raises(InputError, match="dim"):
        select_batch("uncertainty", pool, 5, np.random.default_rng(0), model=fit_model(other, seed=0))


# Candidate pool validation.


def test_pool_rejects_cross_prompt_pair() -> None:
    embeddings = normalise(np.eye(4, DIM))
    with pytest.raises(InputError, match="same prompt"):
        CandidatePool(embeddings, np.array([0, 0, 1, 1]), np.array([0]), np.array([2]), np.zeros(4, bool))


def test_pool_rejects_self_pair() -> None:
    embeddings = normalise(np.eye(4, DIM))
    with pytest.raises(InputError, match="itself"):
        CandidatePool(embeddings, np.zeros(4, np.int64), np.array([1]), np.array([1]), np.zeros(4, bool))


def test_pool_rejects_unnormalised_embeddings() -> None:
    embeddings = 2.0 * np.eye(4, DIM, dtype=np.float32)
    with pytest.raises(InputError, match="normalize"):
        CandidatePool(embeddings, np.zeros(4, np.int64), np.array([0]), np.array([1]), np.zeros(4, bool))


def test_pool_rejects_out_of_range_position() -> None:
    embeddings = normalise(np.eye(4, DIM))
    with pytest.raises(InputError, match="pair_b"):
        CandidatePool(embeddings, np.zeros(4, np.int64), np.array([0]), np.array([9]), np.zeros(4, bool))


# Novelty.


def brute_force_rarity(embeddings: np.ndarray, response_prompt: np.ndarray, n_neighbors: int) -> np.ndarray:
    similarity = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
    rarity = np.zeros(embeddings.shape[0])
    for i in range(embeddings.shape[0]):
        others = np.flatnonzero((response_prompt == response_prompt[i]) & (np.arange(rarity.size) != i))
        if others.size == 0:
            continue
        nearest = np.sort(similarity[i, others])[::-1][: min(n_neighbors, others.size)]
        rarity[i] = 1.0 - nearest.mean()
    return rarity


@pytest.mark.parametrize("n_neighbors", [1, 3, 10])
def test_rarity_matches_brute_force(n_neighbors: int) -> None:
    rng = np.random.default_rng(11)
    sizes = [1, 2, 5, 15, 40]
    response_prompt = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(response_prompt)
    embeddings = normalise(rng.normal(size=(response_prompt.size, DIM)))
    # An exact duplicate can displace a response from its own neighbour list.
    duplicate_source = np.flatnonzero(response_prompt == 3)[:2]
    embeddings[duplicate_source[1]] = embeddings[duplicate_source[0]]

    fast = within_prompt_rarity(embeddings, response_prompt, n_neighbors=n_neighbors)
    expected = brute_force_rarity(embeddings, response_prompt, n_neighbors)
    np.testing.assert_allclose(fast, expected, atol=1e-5)


def test_rarity_single_response_is_zero() -> None:
    rarity = within_prompt_rarity(normalise(np.eye(3, DIM)), np.array([0, 1, 1]))
    assert rarity[0] == 0.0


def test_rarity_outlier_scores_highest() -> None:
    rng = np.random.default_rng(2)
    mode = rng.normal(size=DIM)
    embeddings = normalise(np.vstack([mode + 0.05 * rng.normal(size=(9, DIM)), -mode]))
    rarity = within_prompt_rarity(embeddings, np.zeros(10, np.int64), n_neighbors=3)
    assert int(np.argmax(rarity)) == 9


@pytest.mark.parametrize("n_neighbors", [0, 2.5])
def test_rarity_rejects_invalid_neighbors(n_neighbors: object) -> None:
    with pytest.raises(ConfigError, match="n_neighbors"):
        within_prompt_rarity(normalise(np.eye(3, DIM)), np.zeros(3, np.int64), n_neighbors=n_neighbors)  # type: ignore[arg-type]


def test_distance_to_seen_nothing_seen() -> None:
    distance = distance_to_seen(normalise(np.eye(5, DIM)), np.zeros(5, bool))
    np.testing.assert_array_equal(distance, np.ones(5))


def test_distance_to_seen_matches_brute_force(pool: CandidatePool) -> None:
    distance = distance_to_seen(pool.embeddings, pool.seen)
    expected = 1.0 - (pool.embeddings @ pool.embeddings[pool.seen].T).max(axis=1)
    np.testing.assert_allclose(distance, np.clip(expected, 0.0, 2.0), atol=1e-5)


def test_distance_to_seen_zero_for_seen(pool: CandidatePool) -> None:
    distance = distance_to_seen(pool.embeddings, pool.seen)
    np.testing.assert_allclose(distance[pool.seen], 0.0, atol=1e-5)


def test_novelty_far_from_seen_scores_higher() -> None:
    """Prompt 1 has two answers near the seen ones and two far from them, with equal rarity."""
    axis = np.eye(DIM)
    near = [axis[0] + 0.1 * axis[2], axis[0] - 0.1 * axis[2]]
    far = [axis[1] + 0.1 * axis[3], axis[1] - 0.1 * axis[3]]
    seen_answers = [axis[0] + 0.05 * axis[4], axis[0] - 0.05 * axis[4]]
    embeddings = normalise(np.vstack(seen_answers + near + far))
    response_prompt = np.array([0, 0, 1, 1, 1, 1])
    seen = np.array([True, True, False, False, False, False])
    pool = CandidatePool(embeddings, response_prompt, np.array([2, 4]), np.array([3, 5]), seen)

    near_pair, far_pair = pair_novelty(pool)
    assert far_pair > near_pair


def test_novelty_pair_with_rare_response_scores_high() -> None:
    """A pair of one rare and one common response scores as high as the rare response alone."""
    rng = np.random.default_rng(4)
    mode = rng.normal(size=DIM)
    embeddings = normalise(np.vstack([mode + 0.05 * rng.normal(size=(5, DIM)), -mode]))
    response_prompt = np.zeros(6, np.int64)
    pair_a, pair_b = all_pairs(response_prompt)
    pool = CandidatePool(embeddings, response_prompt, pair_a, pair_b, np.zeros(6, bool))

    novelty = pair_novelty(pool, n_neighbors=3)
    with_rare = (pool.pair_a == 5) | (pool.pair_b == 5)
    assert novelty[with_rare].min() > novelty[~with_rare].max()


def test_novelty_strategy_surfaces_rare_response() -> None:
    rng = np.random.default_rng(6)
    mode = rng.normal(size=DIM)
    embeddings = normalise(np.vstack([mode + 0.05 * rng.normal(size=(9, DIM)), -mode]))
    response_prompt = np.zeros(10, np.int64)
    pair_a, pair_b = all_pairs(response_prompt)
    pool = CandidatePool(embeddings, response_prompt, pair_a, pair_b, np.zeros(10, bool))

    selection = select_batch("novelty", pool, 1, np.random.default_rng(0))
    first = int(selection.indices[0])
    assert 9 in (int(pool.pair_a[first]), int(pool.pair_b[first]))


# Uncertainty.


def boundary_pool() -> tuple[CandidatePool, np.ndarray]:
    """Pairs whose difference has a known component along the reward direction (axis 0)."""
    axis = np.eye(DIM)
    offsets = np.array([0.9, 0.02, -0.6, 0.3, -0.05, 0.7, -0.9, 0.15])
    rows = []
    for offset in offsets:
        rows.append(axis[1] + offset * axis[0])
        rows.append(axis[1] - offset * axis[0])
    embeddings = normalise(np.vstack(rows))
    response_prompt = np.repeat(np.arange(offsets.size), 2)
    pair_a = np.arange(0, 2 * offsets.size, 2)
    pool = CandidatePool(embeddings, response_prompt, pair_a, pair_a + 1, np.zeros(2 * offsets.size, bool))
    return pool, offsets


def boundary_model() -> PreferenceModel:
    """A model fitted on decisive votes that prefer the response with the larger axis-0 component."""
    rng = np.random.default_rng(8)
    diffs = rng.normal(size=(400, DIM))
    labels = (diffs[:, 0] > 0).astype(np.float64)
    return PreferenceModel(n_members=4, seed=0).fit(diffs, labels)


def test_entropy_ranks_boundary_pairs_first() -> None:
    pool, offsets = boundary_pool()
    scores = pair_uncertainty(pool, boundary_model(), uncertainty="entropy")
    expected_order = np.argsort(np.abs(offsets))
    np.testing.assert_array_equal(np.argsort(-scores)[:2], expected_order[:2])


def test_uncertainty_strategy_picks_boundary_pair() -> None:
    pool, offsets = boundary_pool()
    selection = select_batch(
        "uncertainty", pool, 1, np.random.default_rng(0), model=boundary_model(), uncertainty="entropy"
    )
    assert int(selection.indices[0]) == int(np.argmin(np.abs(offsets)))


def test_predictive_entropy_hand_built() -> None:
    probabilities = np.array([[0.95, 0.5, 0.7, 0.52, 0.1]])
    order = np.argsort(-predictive_entropy(probabilities))
    np.testing.assert_array_equal(order, [1, 3, 2, 4, 0])


def test_bald_prefers_disagreement() -> None:
    # Pair 0: members disagree. Pair 1: members agree on a coin flip. Pair 2: members agree it is a.
    probabilities = np.array([[0.9, 0.5, 0.9], [0.1, 0.5, 0.9]])
    scores = bald(probabilities)
    assert scores[0] > scores[1]
    assert scores[1] == pytest.approx(0.0, abs=1e-9)
    assert scores[2] == pytest.approx(0.0, abs=1e-9)


def test_information_gain_matches_explicit_inverse() -> None:
    rng = np.random.default_rng(9)
    voted = rng.normal(size=(30, 6))
    information = voted.T @ voted + np.eye(6)
    diffs = rng.normal(size=(5, 6))
    expected = np.array([d @ np.linalg.solve(information, d) for d in diffs])
    np.testing.assert_allclose(information_gain(diffs, np.linalg.inv(information)), expected, rtol=1e-8)


def test_information_gain_unvoted_direction_higher() -> None:
    voted = np.tile(np.eye(4)[0], (50, 1))
    information_inverse = np.linalg.inv(voted.T @ voted + np.eye(4))
    gains = information_gain(np.eye(4)[:2], information_inverse)
    assert gains[1] > gains[0]


@pytest.mark.parametrize("measure", ["bald", "entropy", "infogain"])
def test_pair_uncertainty_finite(measure: str, pool: CandidatePool, model: PreferenceModel) -> None:
    scores = pair_uncertainty(pool, model, uncertainty=measure)
    assert scores.shape == (pool.n_pairs,)
    assert np.isfinite(scores).all()
    assert scores.min() >= 0.0


# Selectors.


def test_scale_by_rank_ties_share_rank() -> None:
    np.testing.assert_allclose(scale_by_rank(np.array([3.0, 1.0, 3.0, 2.0])), [5 / 6, 0.0, 5 / 6, 1 / 3])


def test_top_k_ties_follow_generator() -> None:
    scores = np.zeros(50)
    first = select_top_k(scores, 5, np.random.default_rng(0))
    same = select_top_k(scores, 5, np.random.default_rng(0))
    other = select_top_k(scores, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(first, other)


def test_k_center_greedy_covers_clusters() -> None:
    rng = np.random.default_rng(12)
    centres = 10.0 * np.eye(3, 4)
    features = np.vstack([centre + 0.01 * rng.normal(size=(5, 4)) for centre in centres])
    picked = k_center_greedy(features, 3)
    assert sorted((picked // 5).tolist()) == [0, 1, 2]


def test_k_center_greedy_cap_stops_early() -> None:
    features = np.eye(4, dtype=np.float32)
    picked = k_center_greedy(features, 4, groups=np.array([0, 0, 1, 1]), max_per_group=1)
    assert picked.size == 2


@pytest.mark.parametrize("name", ["novelty", "hybrid"])
def test_per_prompt_cap_respected(name: str, pool: CandidatePool, model: PreferenceModel) -> None:
    selection = select_batch(name, pool, 12, np.random.default_rng(0), model=model, max_per_prompt=1)
    prompts = pool.pair_prompts(selection.indices)
    assert np.unique(prompts).size == 12


def test_per_prompt_cap_relaxed_when_too_few_prompts() -> None:
    small = make_pool(seed=13, n_prompts=2, per_prompt=5)
    selection = select_batch("novelty", small, 8, np.random.default_rng(0), max_per_prompt=2)
    assert len(selection) == 8


def test_prefilter_below_k_rejected(pool: CandidatePool) -> None:
    with pytest.raises(ConfigError, match="prefilter"):
        select_batch("novelty", pool, 10, np.random.default_rng(0), prefilter=5)


def test_topk_selector_takes_best_scores(pool: CandidatePool) -> None:
    selection = select_batch("novelty", pool, 5, np.random.default_rng(0), selector="topk")
    best = np.sort(pair_novelty(pool))[::-1][:5]
    np.testing.assert_allclose(np.sort(selection.scores)[::-1], best)


def test_sample_by_score_first_propensity() -> None:
    scores = np.array([0.0, 1.0, 2.0, 0.5])
    picked, propensity = sample_by_score(scores, 3, np.random.default_rng(0), temperature=0.5)
    weights = np.exp(scores / 0.5)
    assert propensity[0] == pytest.approx(weights[picked[0]] / weights.sum())


def test_sample_by_score_later_propensity() -> None:
    scores = np.array([0.0, 1.0, 2.0, 0.5])
    picked, propensity = sample_by_score(scores, 3, np.random.default_rng(0), temperature=0.5)
    weights = np.exp(scores / 0.5)
    left = weights.sum() - weights[picked[:2]].sum()
    assert propensity[2] == pytest.approx(weights[picked[2]] / left)


def test_sample_by_score_tiny_weights_finite() -> None:
    scores = np.array([0.0, 1.0, 1000.0])
    _, propensity = sample_by_score(scores, 3, np.random.default_rng(0), temperature=0.01)
    assert np.isfinite(propensity).all()


def test_sample_by_score_frequencies_follow_softmax() -> None:
    scores = np.array([0.0, 1.0, 2.0])
    rng = np.random.default_rng(14)
    firsts = [int(sample_by_score(scores, 1, rng, temperature=1.0)[0][0]) for _ in range(4000)]
    frequencies = np.bincount(firsts, minlength=3) / 4000
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(frequencies, expected, atol=0.03)


def test_sample_by_score_rejects_zero_temperature() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        sample_by_score(np.zeros(3), 1, np.random.default_rng(0), temperature=0.0)


def test_random_propensity_uniform_draws(pool: CandidatePool) -> None:
    selection = select_batch("random", pool, 3, np.random.default_rng(0))
    expected = 1.0 / (pool.n_pairs - np.arange(3))
    np.testing.assert_allclose(selection.propensity, expected)


def test_stochastic_propensity_in_unit_interval(pool: CandidatePool, model: PreferenceModel) -> None:
    selection = select_batch("stochastic", pool, 20, np.random.default_rng(0), model=model)
    assert selection.propensity.min() > 0.0
    assert selection.propensity.max() <= 1.0
