"""The built-in acquisition strategies, registered by name when `acquisition` is imported.

- `random`: uniform over the pool without replacement, as public arenas do.
- `novelty`: pair novelty, then a diverse batch.
- `uncertainty`: pair uncertainty under the preference model, then a diverse batch. Without a model
  it falls back to novelty (cold start) and logs it.
- `hybrid` (the default): novelty and uncertainty mapped to [0, 1] by rank, combined with
  `novelty_weight`, then a diverse batch. Without a model it uses novelty alone. With a model and
  `optimism=True` (the default), each response's novelty is multiplied by the rank of its
  optimistic reward within its prompt (`reward_optimism`), so rare responses that the model rates
  well come first.
- `stochastic`: the hybrid score, then sampling in proportion to exp(score / temperature), with a
  propensity for each pick. It applies no per-prompt cap and no k-center step, because either one
  would change the pick probabilities that the propensities record.

The diverse batch is k-center greedy over the best-scored pairs with a per-prompt cap
(`selector="kcenter"`, see `select_diverse`). The option `selector="topk"` takes the k best scores
instead and ignores `max_per_prompt` and `prefilter`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np

from acquisition.pool import CandidatePool, Selection
from acquisition.registry import register_strategy
from acquisition.scores import (
    DEFAULT_NEIGHBORS,
    DEFAULT_UNCERTAINTY,
    pair_novelty,
    pair_uncertainty,
    reward_optimism,
    scale_by_rank,
)
from acquisition.selectors import (
    DEFAULT_MAX_PER_PROMPT,
    sample_by_score,
    sample_uniform,
    select_diverse,
    select_top_k,
)
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.preference import PreferenceModel

logger = logging.getLogger(__name__)

DEFAULT_STRATEGY = "hybrid"
DEFAULT_NOVELTY_WEIGHT = 0.5
DEFAULT_TEMPERATURE = 0.1

Selector = Literal["kcenter", "topk"]
SELECTORS: tuple[str, ...] = ("kcenter", "topk")


def select_random(
    pool: CandidatePool, k: int, rng: np.random.Generator, *, model: PreferenceModel | None = None
) -> Selection:
    """Select k pairs uniformly at random, with score 0.0 and propensity 1 / (pairs left at that draw)."""
    picked, propensity = sample_uniform(pool.n_pairs, k, rng)
    return Selection.build(picked, np.zeros(pool.n_pairs), propensity=propensity)


def select_novelty(
    pool: CandidatePool,
    k: int,
    rng: np.random.Generator,
    *,
    model: PreferenceModel | None = None,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    selector: Selector = "kcenter",
    max_per_prompt: int | None = DEFAULT_MAX_PER_PROMPT,
    prefilter: int | None = None,
) -> Selection:
    """Select a batch by pair novelty, without using the model."""
    _check_selector(selector)
    novelty = pair_novelty(pool, n_neighbors=n_neighbors)
    picked = _pick(pool, novelty, k, rng, selector, max_per_prompt, prefilter)
    return Selection.build(picked, novelty, novelty=novelty)


def select_uncertainty(
    pool: CandidatePool,
    k: int,
    rng: np.random.Generator,
    *,
    model: PreferenceModel | None = None,
    uncertainty: str = DEFAULT_UNCERTAINTY,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    selector: Selector = "kcenter",
    max_per_prompt: int | None = DEFAULT_MAX_PER_PROMPT,
    prefilter: int | None = None,
) -> Selection:
    """Select a batch by pair uncertainty, or by novelty when there is no model yet.

    `n_neighbors` is used only by the novelty fallback.
    """
    _check_selector(selector)
    if model is None:
        logger.info("strategy uncertainty: no preference model yet (cold start), selecting by novelty")
        return select_novelty(
            pool,
            k,
            rng,
            n_neighbors=n_neighbors,
            selector=selector,
            max_per_prompt=max_per_prompt,
            prefilter=prefilter,
        )

    scores = pair_uncertainty(pool, model, uncertainty=uncertainty)
    picked = _pick(pool, scores, k, rng, selector, max_per_prompt, prefilter)
    return Selection.build(picked, scores, uncertainty=scores)


def select_hybrid(
    pool: CandidatePool,
    k: int,
    rng: np.random.Generator,
    *,
    model: PreferenceModel | None = None,
    novelty_weight: float = DEFAULT_NOVELTY_WEIGHT,
    uncertainty: str = DEFAULT_UNCERTAINTY,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    optimism: bool = True,
    selector: Selector = "kcenter",
    max_per_prompt: int | None = DEFAULT_MAX_PER_PROMPT,
    prefilter: int | None = None,
) -> Selection:
    """Select a batch by the rank-scaled mix of novelty and uncertainty.

    The score is novelty_weight * rank(novelty) + (1 - novelty_weight) * rank(uncertainty), each
    rank mapped to [0, 1]. Without a model the score is rank(novelty) alone.
    """
    _check_selector(selector)
    combined, novelty, uncertainty_scores = _hybrid_scores(
        pool,
        model,
        novelty_weight=novelty_weight,
        uncertainty=uncertainty,
        n_neighbors=n_neighbors,
        optimism=optimism,
    )
    picked = _pick(pool, combined, k, rng, selector, max_per_prompt, prefilter)
    return Selection.build(picked, combined, novelty=novelty, uncertainty=uncertainty_scores)


def select_stochastic(
    pool: CandidatePool,
    k: int,
    rng: np.random.Generator,
    *,
    model: PreferenceModel | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    novelty_weight: float = DEFAULT_NOVELTY_WEIGHT,
    uncertainty: str = DEFAULT_UNCERTAINTY,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    optimism: bool = True,
) -> Selection:
    """Sample a batch in proportion to exp(hybrid score / temperature) and record propensities.

    The hybrid score lies in [0, 1], so at the default temperature of 0.1 the best pair weighs
    e^10 (about 22,000) times the worst.
    """
    combined, novelty, uncertainty_scores = _hybrid_scores(
        pool,
        model,
        novelty_weight=novelty_weight,
        uncertainty=uncertainty,
        n_neighbors=n_neighbors,
        optimism=optimism,
    )
    picked, propensity = sample_by_score(combined, k, rng, temperature=temperature)
    return Selection.build(
        picked, combined, novelty=novelty, uncertainty=uncertainty_scores, propensity=propensity
    )


def _hybrid_scores(
    pool: CandidatePool,
    model: PreferenceModel | None,
    *,
    novelty_weight: float,
    uncertainty: str,
    n_neighbors: int,
    optimism: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return the combined score, the novelty and the uncertainty (None without a model), (N,) each."""
    if not 0.0 <= novelty_weight <= 1.0:
        raise ConfigError(f"novelty_weight is {novelty_weight!r}, expected a value in [0, 1].")

    if model is None:
        logger.info("no preference model yet (cold start): scoring by novelty alone")
        novelty = pair_novelty(pool, n_neighbors=n_neighbors)
        return scale_by_rank(novelty), novelty, None

    optimistic_rank = reward_optimism(pool, model) if optimism else None
    novelty = pair_novelty(pool, n_neighbors=n_neighbors, optimism=optimistic_rank)

    uncertainty_scores = pair_uncertainty(pool, model, uncertainty=uncertainty)
    combined = novelty_weight * scale_by_rank(novelty) + (1.0 - novelty_weight) * scale_by_rank(
        uncertainty_scores
    )
    return combined, novelty, uncertainty_scores


def _pick(
    pool: CandidatePool,
    scores: np.ndarray,
    k: int,
    rng: np.random.Generator,
    selector: Selector,
    max_per_prompt: int | None,
    prefilter: int | None,
) -> np.ndarray:
    if selector == "topk":
        return select_top_k(scores, k, rng)
    return select_diverse(pool, scores, k, rng, max_per_prompt=max_per_prompt, prefilter=prefilter)


def _check_selector(selector: str) -> None:
    if selector not in SELECTORS:
        raise ConfigError(f"selector is {selector!r}, expected one of {', '.join(SELECTORS)}.")


register_strategy("random", select_random)
register_strategy("novelty", select_novelty)
register_strategy("uncertainty", select_uncertainty)
register_strategy("hybrid", select_hybrid)
register_strategy("stochastic", select_stochastic)
