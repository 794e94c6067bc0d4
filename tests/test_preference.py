"""Tests of the Bradley-Terry ensemble on seeded synthetic votes with known latent rewards."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError, PrefscoutError
from engine.preference import PreferenceModel, evaluate_heldout

DIM = 32


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two arrays without ties."""
    first_ranks = np.argsort(np.argsort(first))
    second_ranks = np.argsort(np.argsort(second))
    return float(np.corrcoef(first_ranks, second_ranks)[0, 1])


def synthetic_votes(
    seed: int, n_responses: int = 300, n_votes: int = 3000, n_prompts: int = 30, dim: int = DIM
) -> dict[str, np.ndarray]:
    """Bradley-Terry votes: p(a beats b) = sigmoid(r(a) - r(b)) with r linear in the embedding."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n_responses, dim))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    # Rewards of unit embeddings then have a standard deviation of about 2, so votes are informative.
    true_weights = 2.0 * rng.normal(size=dim)
    rewards = embeddings @ true_weights

    # Responses are split evenly over prompts, and both responses of a vote answer one prompt.
    per_prompt = n_responses // n_prompts
    response_prompt = np.arange(n_responses) // per_prompt
    pair_a = rng.integers(0, n_responses, size=n_votes)
    shift = rng.integers(1, per_prompt, size=n_votes)
    pair_b = response_prompt[pair_a] * per_prompt + (pair_a % per_prompt + shift) % per_prompt

    probabilities = 1.0 / (1.0 + np.exp(-(rewards[pair_a] - rewards[pair_b])))
    labels = (rng.random(pair_a.size) < probabilities).astype(np.float64)
    return {
        "embeddings": embeddings,
        "rewards": rewards,
        "diffs": embeddings[pair_a] - embeddings[pair_b],
        "labels": labels,
        "groups": response_prompt[pair_a],
    }


@pytest.fixture(scope="module")
def votes() -> dict[str, np.ndarray]:
    return synthetic_votes(seed=0)


@pytest.fixture(scope="module")
def model(votes: dict[str, np.ndarray]) -> PreferenceModel:
    return PreferenceModel(n_members=8, l2=1.0, seed=0).fit(votes["diffs"], votes["labels"])


def test_model_recovers_latent_rewards(model: PreferenceModel, votes: dict[str, np.ndarray]) -> None:
    learned = model.rewards(votes["embeddings"])
    assert rank_correlation(learned, votes["rewards"]) >= 0.9


def test_model_shapes(model: PreferenceModel, votes: dict[str, np.ndarray]) -> None:
    assert model.weights.shape == (8, DIM)
    assert model.member_probabilities(votes["diffs"][:5]).shape == (8, 5)
    assert model.predict_proba(votes["diffs"][:5]).shape == (5,)
    assert model.n_votes == votes["labels"].size


def test_model_antisymmetric(model: PreferenceModel, votes: dict[str, np.ndarray]) -> None:
    diffs = votes["diffs"][:50]
    np.testing.assert_allclose(model.predict_proba(diffs) + model.predict_proba(-diffs), 1.0, atol=1e-12)


def test_model_members_differ(model: PreferenceModel) -> None:
    assert not np.allclose(model.weights[0], model.weights[1])


def test_model_same_seed_same_weights(votes: dict[str, np.ndarray]) -> None:
    first = PreferenceModel(n_members=3, seed=4).fit(votes["diffs"], votes["labels"])
    second = PreferenceModel(n_members=3, seed=4).fit(votes["diffs"], votes["labels"])
    np.testing.assert_array_equal(first.weights, second.weights)


def test_model_information_matrix(model: PreferenceModel, votes: dict[str, np.ndarray]) -> None:
    expected = votes["diffs"].T @ votes["diffs"] + 1.0 * np.eye(DIM)
    np.testing.assert_allclose(model.information_matrix, expected, rtol=1e-10)


def test_model_separable_votes_finite() -> None:
    """Separable votes have no unregularised optimum, so the L2 penalty must keep weights finite."""
    rng = np.random.default_rng(3)
    diffs = rng.normal(size=(200, 8))
    labels = (diffs[:, 0] > 0).astype(np.float64)
    fitted = PreferenceModel(n_members=2, l2=0.01).fit(diffs, labels)
    assert np.isfinite(fitted.weights).all()
    assert fitted.predict_proba(np.eye(8)[:1])[0] > 0.99


def test_model_one_vote() -> None:
    fitted = PreferenceModel(n_members=2).fit(np.ones((1, 4)), np.array([1.0]))
    assert fitted.predict_proba(np.ones((1, 4)))[0] > 0.5


def test_fit_rejects_no_votes() -> None:
    """All-tie rounds leave no decisive vote, so the caller passes model=None to acquisition instead."""
    with pytest.raises(InputError, match="model=None"):
        PreferenceModel().fit(np.empty((0, 4)), np.empty(0))


def test_fit_rejects_tie_label() -> None:
    with pytest.raises(InputError, match="tie"):
        PreferenceModel().fit(np.ones((2, 4)), np.array([1.0, 0.5]))


def test_fit_rejects_nan_diffs() -> None:
    diffs = np.ones((2, 4))
    diffs[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        PreferenceModel().fit(diffs, np.array([1.0, 0.0]))


@pytest.mark.parametrize("options", [{"n_members": 0}, {"l2": 0.0}, {"l2": float("nan")}])
def test_model_rejects_invalid_options(options: dict[str, float]) -> None:
    with pytest.raises(InputError):
        PreferenceModel(**options)


def test_unfitted_model_raises() -> None:
    with pytest.raises(PrefscoutError, match="not fitted"):
        PreferenceModel().predict_proba(np.ones((1, 4)))


def test_predict_dimension_mismatch(model: PreferenceModel) -> None:
    with pytest.raises(InputError, match=f"\\(N, {DIM}\\)"):
        model.predict_proba(np.ones((2, DIM + 1)))


def test_heldout_metrics(votes: dict[str, np.ndarray]) -> None:
    result = evaluate_heldout(votes["diffs"], votes["labels"], votes["groups"], n_members=4)
    assert result is not None
    assert result["n_train"] + result["n_test"] == votes["labels"].size
    assert result["n_test"] > 0
    assert result["accuracy"] > 0.7
    assert result["log_likelihood"] > np.log(0.5)


def test_heldout_splits_by_group(votes: dict[str, np.ndarray]) -> None:
    """With 30 groups of 100 votes, a split by whole groups holds out 3 groups, 300 votes."""
    groups = np.arange(votes["labels"].size) // 100
    result = evaluate_heldout(votes["diffs"], votes["labels"], groups, test_fraction=0.1, n_members=2)
    assert result is not None
    assert result["n_test"] == 300


def test_heldout_too_few_votes(votes: dict[str, np.ndarray]) -> None:
    assert evaluate_heldout(votes["diffs"][:5], votes["labels"][:5], votes["groups"][:5]) is None


def test_heldout_one_group(votes: dict[str, np.ndarray]) -> None:
    groups = np.zeros(votes["labels"].size, dtype=np.int64)
    assert evaluate_heldout(votes["diffs"], votes["labels"], groups) is None


def test_heldout_no_votes() -> None:
    assert evaluate_heldout(np.empty((0, 4)), np.empty(0), np.empty(0)) is None


def test_heldout_rejects_invalid_fraction(votes: dict[str, np.ndarray]) -> None:
    with pytest.raises(InputError, match="test_fraction"):
        evaluate_heldout(votes["diffs"], votes["labels"], votes["groups"], test_fraction=1.0)
