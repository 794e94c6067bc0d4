"""The built-in acquisition strategies, registered by name when `acquisition` is imported.

- `random`: uniform over the pool without replacement, as public arenas do.
- `novelty`: pair novelty, then a diverse batch.
- `uncertainty`: by default (`uncertainty="variance"`) a greedy batch that most reduces the
  preference model's predictive variance on the pool (see acquisition/variance.py); before the
  first votes it uses the prior. With a per-pair measure (`bald`, `entropy`, `infogain`): pair
  uncertainty, then a diverse batch, and novelty without a model (cold start).
- `hybrid` (the default): a share `novelty_weight` of the batch is chosen by novelty (a diverse
  batch), the rest by variance reduction given those pairs, so the second part avoids what the
  first already asks. With a model and `optimism=True` (the default), novelty is weighted by
  `reward_optimism`: with modes, by the chance that the rarer answer of a pair is the best one of
  its prompt, so minority answers that the model rates above the majority come first. With a
  per-pair uncertainty measure, the score is instead the mix of novelty and uncertainty ranks, and
  then a diverse batch.
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
    UNCERTAINTY_MEASURES,
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
from acquisition.variance import select_variance_reduction
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.preference import PreferenceModel

logger = logging.getLogger(__name__)

DEFAULT_STRATEGY = "hybrid"
# The share of a hybrid batch chosen by novelty. With modes from an answer field, a share of 0.5
# found over twice the rare correct answers of `random` on MATH level 5 at about the same held-out
# accuracy. With embedding clusters as modes (MT-Bench), each novelty pick taught the preference
# model less than a variance-reduction pick, so the default without an answer field is small.
DEFAULT_NOVELTY_WEIGHT = 0.1
ANSWER_NOVELTY_WEIGHT = 0.5
DEFAULT_TEMPERATURE = 0.1

Selector = Literal["kcenter", "topk"]
SELECTORS: tuple[str, ...] = ("kcenter", "topk")

# The batch measure of `uncertainty` and `hybrid`, and their default. It chooses a whole batch, so
# `stochastic`, which samples pairs by a per-pair score, takes the per-pair measures only.
VARIANCE = "variance"
BATCH_UNCERTAINTY = VARIANCE


def default_novelty_weight(answer_modes: bool) -> float:
    """Return the default novelty weight: ANSWER_NOVELTY_WEIGHT when modes come from an answer field."""
    return ANSWER_NOVELTY_WEIGHT if answer_modes else DEFAULT_NOVELTY_WEIGHT


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
    uncertainty: str = BATCH_UNCERTAINTY,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    selector: Selector = "kcenter",
    max_per_prompt: int | None = DEFAULT_MAX_PER_PROMPT,
    prefilter: int | None = None,
) -> Selection:
    """Select a batch by uncertainty.

    With `uncertainty="variance"`, a greedy variance-reduction batch (the prior stands in for the
    model before the first votes; `selector`, `prefilter` and `n_neighbors` are unused). With a
    per-pair measure, pair uncertainty and the selector, or novelty when there is no model yet
    (`n_neighbors` is used only by that fallback).
    """
    _check_selector(selector)
    _check_uncertainty(uncertainty, batch=True)
    if uncertainty == VARIANCE:
        picked, gains = select_variance_reduction(pool, model, k, rng, max_per_prompt=max_per_prompt)
        scores = _at_picks(pool.n_pairs, picked, gains)
        return Selection.build(picked, scores, uncertainty=scores)
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
    uncertainty: str = BATCH_UNCERTAINTY,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    optimism: bool = True,
    selector: Selector = "kcenter",
    max_per_prompt: int | None = DEFAULT_MAX_PER_PROMPT,
    prefilter: int | None = None,
) -> Selection:
    """Select a batch by novelty and uncertainty.

    With `uncertainty="variance"`, novelty_weight * k pairs are chosen by novelty with the selector.
    That count is an average, because a fractional part is rounded up with its own probability.
    The rest of the batch comes from greedy variance reduction given those pairs, with the prior
    before the first votes. A pair's score is the novelty or the variance gain of the part that chose it, so
    the two parts' scores are on different scales. The part that chose a pair is the one whose
    column (`novelty` or `uncertainty`) is not NaN.

    With a per-pair measure, the score is novelty_weight * rank(novelty) + (1 - novelty_weight) *
    rank(uncertainty), each rank mapped to [0, 1], and the selector picks the batch. Without a
    model the score is rank(novelty) alone.
    """
    _check_selector(selector)
    _check_uncertainty(uncertainty, batch=True)
    if uncertainty == VARIANCE:
        return _novelty_then_variance(
            pool,
            k,
            rng,
            model,
            novelty_weight=novelty_weight,
            n_neighbors=n_neighbors,
            optimism=optimism,
            selector=selector,
            max_per_prompt=max_per_prompt,
            prefilter=prefilter,
        )
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
    _check_uncertainty(uncertainty, batch=False)
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


def _novelty_then_variance(
    pool: CandidatePool,
    k: int,
    rng: np.random.Generator,
    model: PreferenceModel | None,
    *,
    novelty_weight: float,
    n_neighbors: int,
    optimism: bool,
    selector: Selector,
    max_per_prompt: int | None,
    prefilter: int | None,
) -> Selection:
    """Choose the novelty share of the batch, then the rest by variance reduction given it."""
    _check_novelty_weight(novelty_weight)
    optimistic_rank = reward_optimism(pool, model) if optimism and model is not None else None
    novelty = pair_novelty(pool, n_neighbors=n_neighbors, optimism=optimistic_rank)
    n_novel = _novelty_share(novelty_weight, k, rng)
    novel = (
        _pick(pool, novelty, n_novel, rng, selector, max_per_prompt, prefilter)
        if n_novel
        else np.empty(0, dtype=np.int64)
    )
    rest, gains = select_variance_reduction(
        pool, model, k - novel.size, rng, max_per_prompt=max_per_prompt, chosen=novel
    )
    picked = np.concatenate([novel, rest])
    uncertainty_scores = _at_picks(pool.n_pairs, rest, gains)
    novelty_scores = np.full(pool.n_pairs, np.nan)
    novelty_scores[novel] = novelty[novel]
    scores = np.where(np.isnan(novelty_scores), uncertainty_scores, novelty_scores)
    return Selection.build(picked, scores, novelty=novelty_scores, uncertainty=uncertainty_scores)


def _novelty_share(novelty_weight: float, k: int, rng: np.random.Generator) -> int:
    """Return the number of novelty picks in a batch of k, novelty_weight * k on average.

    The fractional part is rounded up with its own probability, so that a weight of 0.1 still
    gives a batch of 5 one novelty pick half of the time. No random number is drawn when
    novelty_weight * k is whole.
    """
    expected = novelty_weight * k
    whole = int(np.floor(expected))
    fraction = expected - whole
    if fraction > 1e-9 and rng.random() < fraction:
        whole += 1
    return min(whole, k)


def _at_picks(n_pairs: int, picked: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Spread the values (k,) of the picked pairs into a pool-wide array (N,), NaN elsewhere."""
    spread = np.full(n_pairs, np.nan)
    spread[picked] = values
    return spread


def _check_novelty_weight(novelty_weight: float) -> None:
    if not 0.0 <= novelty_weight <= 1.0:
        raise ConfigError(f"novelty_weight is {novelty_weight!r}, expected a value in [0, 1].")


def _check_uncertainty(uncertainty: str, *, batch: bool) -> None:
    known = (VARIANCE, *UNCERTAINTY_MEASURES) if batch else UNCERTAINTY_MEASURES
    if uncertainty in known:
        return
    if uncertainty == VARIANCE:
        raise ConfigError(
            "uncertainty 'variance' chooses a whole batch, so the stochastic strategy cannot sample "
            f"by it: pass one of {', '.join(UNCERTAINTY_MEASURES)}."
        )
    raise ConfigError(f"uncertainty is {uncertainty!r}, expected one of {', '.join(known)}.")


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
    _check_novelty_weight(novelty_weight)

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
