"""Greedy variance reduction (acquisition/variance.py) and the Laplace posterior it reads."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition import CandidatePool, select_batch
from acquisition.variance import (
    fisher_weights,
    greedy_variance_reduction,
    select_variance_reduction,
    target_moment,
)
from engine.errors import ConfigError, InputError
from engine.preference import PreferenceModel

DIM = 6


def brute_force_gains(diffs, fisher, covariance, target):
    """Gain of each row computed from scratch: tr(A C) - tr(A C') with C' the updated covariance."""
    gains = []
    for x, f in zip(diffs, fisher):
        updated = covariance - np.outer(covariance @ x, covariance @ x) / (1.0 / f + x @ covariance @ x)
        gains.append(np.trace(target @ covariance) - np.trace(target @ updated))
    return np.array(gains)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    diffs = rng.normal(size=(40, DIM))
    fisher = rng.uniform(0.05, 0.25, size=40)
    root = rng.normal(size=(DIM, DIM))
    covariance = root @ root.T / DIM + 0.1 * np.eye(DIM)
    target = target_moment(rng.normal(size=(100, DIM)), rng.uniform(0.05, 0.25, size=100))
    return diffs, fisher, covariance, target


def test_first_pick_is_brute_force_best(problem) -> None:
    diffs, fisher, covariance, target = problem
    rows, gains = greedy_variance_reduction(diffs, fisher, covariance, target, 1)
    assert rows[0] == int(np.argmax(brute_force_gains(diffs, fisher, covariance, target)))


def test_first_gain_matches_brute_force(problem) -> None:
    diffs, fisher, covariance, target = problem
    _, gains = greedy_variance_reduction(diffs, fisher, covariance, target, 1)
    assert gains[0] == pytest.approx(brute_force_gains(diffs, fisher, covariance, target).max())


def test_rank_one_updates_match_brute_force(problem) -> None:
    """The second gain equals the brute-force gain under the covariance updated by the first pick."""
    diffs, fisher, covariance, target = problem
    rows, gains = greedy_variance_reduction(diffs, fisher, covariance, target, 2)
    x, f = diffs[rows[0]], fisher[rows[0]]
    updated = covariance - np.outer(covariance @ x, covariance @ x) / (1.0 / f + x @ covariance @ x)
    expected = brute_force_gains(diffs, fisher, updated, target)
    expected[rows[0]] = -np.inf
    assert gains[1] == pytest.approx(expected.max())


def test_batch_skips_a_duplicate_direction() -> None:
    """After a vote on x, a copy of x is worth less than an orthogonal pair of slightly lower gain."""
    x = np.array([1.0, 0.0, 0.0])
    y = np.array([0.0, 0.95, 0.0])
    diffs = np.stack([x, x.copy(), y])
    rows, _ = greedy_variance_reduction(diffs, np.full(3, 0.25), np.eye(3), np.eye(3), 2)
    assert rows.tolist() == [0, 2]


def test_cap_per_group() -> None:
    rng = np.random.default_rng(1)
    diffs = rng.normal(size=(30, DIM))
    groups = np.repeat(np.arange(10), 3)
    rows, _ = greedy_variance_reduction(
        diffs, np.full(30, 0.25), np.eye(DIM), np.eye(DIM), 10, groups=groups, max_per_group=1
    )
    assert np.unique(groups[rows]).size == 10


def test_cap_lifted_when_exhausted() -> None:
    rng = np.random.default_rng(2)
    diffs = rng.normal(size=(6, DIM))
    groups = np.array([0, 0, 0, 1, 1, 1])
    rows, _ = greedy_variance_reduction(
        diffs, np.full(6, 0.25), np.eye(DIM), np.eye(DIM), 4, groups=groups, max_per_group=1
    )
    assert np.unique(rows).size == 4


def test_conditioned_pair_lowers_gain_of_its_copy() -> None:
    x = np.array([[1.0, 0.0, 0.0]])
    _, alone = greedy_variance_reduction(x, np.full(1, 0.25), np.eye(3), np.eye(3), 1)
    _, after = greedy_variance_reduction(
        x, np.full(1, 0.25), np.eye(3), np.eye(3), 1, conditioned=(x, np.full(1, 0.25), None)
    )
    assert after[0] < alone[0]


def test_fisher_weights_without_model() -> None:
    assert fisher_weights(np.ones((3, DIM)), None).tolist() == [0.25, 0.25, 0.25]


def test_target_moment_rejects_empty() -> None:
    with pytest.raises(InputError, match="target"):
        target_moment(np.empty((0, DIM)), np.empty(0))


def make_pool(seed: int = 0, n_prompts: int = 8, per_prompt: int = 4) -> CandidatePool:
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n_prompts * per_prompt, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    response_prompt = np.repeat(np.arange(n_prompts), per_prompt)
    first, second = np.triu_indices(per_prompt, k=1)
    offsets = np.arange(n_prompts)[:, None] * per_prompt
    pair_a = (offsets + first).ravel()
    pair_b = (offsets + second).ravel()
    seen = np.zeros(embeddings.shape[0], dtype=bool)
    return CandidatePool(embeddings, response_prompt, pair_a, pair_b, seen)


def fit_model(pool: CandidatePool, seed: int = 0) -> PreferenceModel:
    rng = np.random.default_rng(seed)
    diffs = pool.embeddings[pool.pair_a] - pool.embeddings[pool.pair_b]
    labels = (rng.random(diffs.shape[0]) < 0.5).astype(np.float64)
    return PreferenceModel(n_members=2, seed=seed).fit(diffs, labels)


def test_select_excludes_chosen() -> None:
    pool = make_pool()
    chosen = np.array([0, 1, 2])
    picked, _ = select_variance_reduction(
        pool, fit_model(pool), 5, np.random.default_rng(0), max_per_prompt=2, chosen=chosen
    )
    assert not np.isin(picked, chosen).any()


def test_select_samples_candidates_beyond_the_limit() -> None:
    pool = make_pool()
    picked, _ = select_variance_reduction(
        pool, None, 5, np.random.default_rng(0), max_per_prompt=None, max_candidates=10
    )
    assert picked.size == 5


def test_select_rejects_bad_limit() -> None:
    pool = make_pool()
    with pytest.raises(ConfigError, match="max_candidates"):
        select_variance_reduction(
            pool, None, 5, np.random.default_rng(0), max_per_prompt=None, max_candidates=0
        )


def test_select_is_deterministic_per_seed() -> None:
    pool = make_pool()
    model = fit_model(pool)
    first = select_batch("uncertainty", pool, 6, np.random.default_rng(3), model=model)
    second = select_batch("uncertainty", pool, 6, np.random.default_rng(3), model=model)
    assert first.indices.tolist() == second.indices.tolist()


def test_hybrid_novelty_share() -> None:
    pool = make_pool()
    selection = select_batch(
        "hybrid", pool, 8, np.random.default_rng(0), model=fit_model(pool), novelty_weight=0.25
    )
    assert np.isfinite(selection.novelty).sum() == 2


def test_hybrid_fractional_share() -> None:
    """A share of 0.1 of a batch of 5 gives one novelty pick in about half of the batches."""
    pool = make_pool()
    model = fit_model(pool)
    counts = [
        int(np.isfinite(select_batch("hybrid", pool, 5, np.random.default_rng(seed), model=model).novelty).sum())
        for seed in range(40)
    ]
    assert set(counts) == {0, 1}
    assert 10 <= sum(counts) <= 30


def test_hybrid_all_novelty() -> None:
    pool = make_pool()
    selection = select_batch(
        "hybrid", pool, 8, np.random.default_rng(0), model=fit_model(pool), novelty_weight=1.0
    )
    assert np.isnan(selection.uncertainty).all()


# The Laplace posterior of the preference model.


def test_posterior_covariance_is_inverse_hessian() -> None:
    pool = make_pool()
    model = fit_model(pool)
    diffs = (pool.embeddings[pool.pair_a] - pool.embeddings[pool.pair_b]).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(diffs @ model.map_weights)))
    hessian = (diffs * (p * (1 - p))[:, None]).T @ diffs + model.l2 * np.eye(DIM)
    assert np.allclose(model.posterior_covariance @ hessian, np.eye(DIM), atol=1e-8)


def test_map_weights_zero_gradient() -> None:
    pool = make_pool()
    rng = np.random.default_rng(0)
    diffs = (pool.embeddings[pool.pair_a] - pool.embeddings[pool.pair_b]).astype(np.float64)
    labels = (rng.random(diffs.shape[0]) < 0.5).astype(np.float64)
    model = PreferenceModel(n_members=2, seed=0).fit(diffs, labels)
    p = 1.0 / (1.0 + np.exp(-(diffs @ model.map_weights)))
    gradient = diffs.T @ (p - labels) + model.l2 * model.map_weights
    assert np.abs(gradient).max() < 1e-4



def test_gain_highest_near_boundary() -> None:
    """Two pairs reach the target direction equally; the one whose logit is 0 is picked first."""
    diffs = np.array([[1.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    fisher = fisher_weights(diffs, np.array([0.0, 1.0, 0.0]))  # logits 0 and 3
    target = np.diag([1.0, 0.0, 0.0])
    rows, _ = greedy_variance_reduction(diffs, fisher, np.eye(3), target, 1)
    assert rows[0] == 0
