"""Batch selectors: turn one score per pair into a batch of pair positions.

All randomness, tie-breaking included, comes from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import logging

import numpy as np

from acquisition.pool import CandidatePool, pair_features
from engine.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PER_PROMPT = 2

# Without an explicit prefilter, k-center runs over the PREFILTER_FACTOR * k best-scored pairs,
# because each k-center pick costs one pass over its candidates.
PREFILTER_FACTOR = 10


def rank_order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return all positions of scores (N,) from highest to lowest, ties in random order, (N,) int64."""
    tie_breaker = rng.random(scores.shape[0])
    return np.lexsort((tie_breaker, -scores)).astype(np.int64)


def select_top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Return the positions of the k highest scores, best first, ties broken at random, (k,)."""
    return rank_order(scores, rng)[:k]


def k_center_greedy(
    features: np.ndarray,
    k: int,
    *,
    groups: np.ndarray | None = None,
    max_per_group: int | None = None,
) -> np.ndarray:
    """Pick up to k rows of features (P, D) that cover them, starting from row 0.

    Each step picks the row farthest (Euclidean) from all rows picked so far. A group that reaches
    `max_per_group` picks has its other rows excluded, so fewer than k rows come back when the
    caps exclude every remaining row. Ties go to the lowest row, so the caller sets the tie order
    by ordering the rows. Returns row positions in pick order, (<= k,) int64.
    """
    n_rows = features.shape[0]
    if n_rows == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)

    features = np.asarray(features, dtype=np.float32)
    squared_norms = np.einsum("ij,ij->i", features, features)
    min_distance = np.full(n_rows, np.inf, dtype=np.float32)
    picks_per_group: dict[int, int] = {}
    picked: list[int] = []

    candidate = 0
    while len(picked) < k:
        picked.append(candidate)
        distance = squared_norms + squared_norms[candidate] - 2.0 * (features @ features[candidate])
        np.minimum(min_distance, np.maximum(distance, 0.0), out=min_distance)
        # Picked and capped rows get -1, below any real squared distance.
        min_distance[candidate] = -1.0

        if groups is not None and max_per_group is not None:
            group = int(groups[candidate])
            picks_per_group[group] = picks_per_group.get(group, 0) + 1
            if picks_per_group[group] >= max_per_group:
                min_distance[groups == group] = -1.0

        candidate = int(np.argmax(min_distance))
        if min_distance[candidate] < 0.0:
            break
    return np.asarray(picked, dtype=np.int64)


def select_diverse(
    pool: CandidatePool,
    scores: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    max_per_prompt: int | None = DEFAULT_MAX_PER_PROMPT,
    prefilter: int | None = None,
) -> np.ndarray:
    """Select k diverse pairs among the best-scored ones, at most `max_per_prompt` per prompt.

    Runs k-center greedy over the `prefilter` best-scored pairs (PREFILTER_FACTOR * k when None),
    starting from the best one. The pair feature is the normalised mean of the two response
    embeddings (`pair_features`), built for the prefilter candidates only. When the caps leave
    fewer than k pairs in the prefilter, the best-scored pairs outside it that respect the cap fill
    the batch. Only when the cap cannot be met at all do the best-scored remaining pairs fill the
    rest regardless of the cap.

    Args:
        scores: (N,) one finite score per pair of the pool.
        max_per_prompt: cap per prompt, None for no cap.

    Returns:
        (min(k, N),) int64 pair positions in pick order.
    """
    _check_selector_options(k, max_per_prompt, prefilter)
    k = min(k, pool.n_pairs)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if prefilter is None:
        prefilter = PREFILTER_FACTOR * k

    order = rank_order(scores, rng)
    candidates = order[:prefilter]
    prompts = pool.pair_prompts()
    picked_rows = k_center_greedy(
        pair_features(pool, candidates),
        k,
        groups=prompts[candidates],
        max_per_group=max_per_prompt,
    )
    picked = candidates[picked_rows]
    if picked.size == k:
        return picked

    picked = _fill_by_rank(picked, order, prompts, k, max_per_prompt)
    if picked.size < k:
        logger.info(
            "per-prompt cap of %s relaxed: only %d of %d pairs fit under it", max_per_prompt, picked.size, k
        )
        picked = _fill_by_rank(picked, order, prompts, k, None)
    return picked


def sample_by_score(
    scores: np.ndarray, k: int, rng: np.random.Generator, *, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sample k positions without replacement with probability proportional to exp(score / temperature).

    Sorting score / temperature plus Gumbel noise gives the same distribution as k successive
    draws (the Gumbel top-k trick), in one O(N) pass. The propensity of the j-th pick is the
    probability that draw j picked it: its weight divided by the weight of the positions not yet
    picked before draw j. It is not the inclusion probability over the whole batch.

    Args:
        scores: (N,) finite scores.
        temperature: > 0. Lower values concentrate the draws on the highest scores.

    Returns:
        positions (min(k, N),) int64 in draw order, and their propensities (min(k, N),) float64.
    """
    if not temperature > 0.0 or not np.isfinite(temperature):
        raise ConfigError(f"temperature is {temperature!r}, expected a finite value > 0.")
    k = min(k, scores.shape[0])
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)

    log_weights = np.asarray(scores, dtype=np.float64) / temperature
    keys = log_weights + rng.gumbel(size=log_weights.shape[0])
    if k < keys.shape[0]:
        top = np.argpartition(-keys, k - 1)[:k]
    else:
        top = np.arange(keys.shape[0])
    picked = top[np.argsort(-keys[top], kind="stable")].astype(np.int64)

    # Mass left before draw j = mass never picked + mass of picks j, j+1, ..., in log space so that
    # tiny weights neither underflow nor cancel.
    unpicked = np.ones(log_weights.shape[0], dtype=bool)
    unpicked[picked] = False
    log_unpicked_mass = _log_sum_exp(log_weights[unpicked])
    log_later_picks = np.logaddexp.accumulate(log_weights[picked][::-1])[::-1]
    log_remaining = np.logaddexp(log_unpicked_mass, log_later_picks)
    propensity = np.exp(log_weights[picked] - log_remaining)
    return picked, propensity


def sample_uniform(n_pairs: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample k of n_pairs positions uniformly without replacement.

    Returns positions (min(k, n_pairs),) int64 in draw order and their propensities: the j-th draw
    (from 0) picks among n_pairs - j positions, so its propensity is 1 / (n_pairs - j).
    """
    k = min(k, n_pairs)
    picked = rng.choice(n_pairs, size=k, replace=False, shuffle=True).astype(np.int64)
    propensity = 1.0 / (n_pairs - np.arange(k, dtype=np.float64))
    return picked, propensity


def _fill_by_rank(
    picked: np.ndarray,
    order: np.ndarray,
    prompts: np.ndarray,
    k: int,
    max_per_prompt: int | None,
) -> np.ndarray:
    """Append the best-ranked unpicked pairs to `picked` until it has k, under the cap if one is given."""
    remaining = order[~np.isin(order, picked)]
    if max_per_prompt is not None:
        used = np.bincount(prompts[picked], minlength=int(prompts.max()) + 1)
        rank_in_prompt = _cumulative_count(prompts[remaining])
        remaining = remaining[used[prompts[remaining]] + rank_in_prompt < max_per_prompt]
    return np.concatenate([picked, remaining[: k - picked.size]])


def _cumulative_count(groups: np.ndarray) -> np.ndarray:
    """Return, for each entry of groups (n,), how many earlier entries share its group, (n,)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    is_start = np.concatenate([[True], sorted_groups[1:] != sorted_groups[:-1]])
    run_start = np.maximum.accumulate(np.where(is_start, np.arange(groups.size), 0))
    counts = np.empty(groups.size, dtype=np.int64)
    counts[order] = np.arange(groups.size) - run_start
    return counts


def _log_sum_exp(values: np.ndarray) -> float:
    if values.size == 0:
        return -np.inf
    peak = float(values.max())
    return peak + float(np.log(np.exp(values - peak).sum()))


def _check_selector_options(k: int, max_per_prompt: int | None, prefilter: int | None) -> None:
    if max_per_prompt is not None and (not isinstance(max_per_prompt, int) or max_per_prompt < 1):
        raise ConfigError(f"max_per_prompt is {max_per_prompt!r}, expected an integer >= 1 or None.")
    if prefilter is not None and (not isinstance(prefilter, int) or prefilter < k):
        raise ConfigError(
            f"prefilter is {prefilter!r}, expected an integer >= k ({k}) or None for {PREFILTER_FACTOR} * k."
        )
