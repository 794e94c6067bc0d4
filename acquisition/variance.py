"""Batch selection by the expected reduction of the preference model's predictive variance.

The Laplace approximation of the Bradley-Terry posterior is w ~ N(w_map, C), with C the inverse of
the penalised Hessian at the fitted weights (`PreferenceModel.posterior_covariance`). The logit of a
pair with feature difference d then has variance d^T C d. One vote on pair x, whose Fisher weight
is f = p (1 - p), adds f x x^T to the posterior precision, so the covariance becomes

    C' = C - C x x^T C / (1 / f + x^T C x).

What should shrink is the variance of the logits of the pairs the model will judge later, each
weighted by its own Fisher weight. That is tr(A C), with A the mean of f* d* d*^T over target
pairs. A uniform sample of the pool serves as the target pairs. The vote on x lowers tr(A C) by exactly

    gain(x) = x^T C A C x / (1 / f + x^T C x).

The batch is greedy: pick the pair with the largest gain, apply the rank-one update to C, rescore,
and repeat, so a batch does not spend its labels on one direction of the feature space. In active
learning this criterion is called variance reduction, and it is a linearised form of the expected
predictive information gain (EPIG). Unlike BALD, it gives little to a pair whose outcome is near
certain (f small) and little to a pair unlike every target pair.

Each pick costs two (N, D) matrix-vector products, so pools larger than `DEFAULT_MAX_CANDIDATES`
pairs are scored on a uniform sample of that many candidates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from acquisition.pool import CandidatePool, pair_differences
from engine.errors import ConfigError, InputError

if TYPE_CHECKING:
    from engine.preference import PreferenceModel

logger = logging.getLogger(__name__)

# Candidates scored per batch at most (a uniform sample of the pool beyond it). 30,000 pairs of
# 384 float64 features are 92 MB, and 1,000 picks over them took about 5 s on 2 cores (see
# docs/benchmarks.md, Selection time).
DEFAULT_MAX_CANDIDATES = 30_000

# Target pairs sampled from the pool to build A.
DEFAULT_TARGETS = 2_000

# Before the first votes, the posterior is the prior N(0, I / PRIOR_PRECISION), the prior of a
# PreferenceModel with its default l2 of 1.0, and every pair has p = 0.5.
PRIOR_PRECISION = 1.0

# Fisher weights are clipped here from below, so that 1 / f stays finite for near-certain pairs.
MIN_FISHER_WEIGHT = 1e-6


def fisher_weights(diffs: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Return p (1 - p) of each pair under the weights (D,), (N,) float64; 0.25 when weights is None."""
    if weights is None:
        return np.full(diffs.shape[0], 0.25)
    probabilities = 1.0 / (1.0 + np.exp(-(np.asarray(diffs, dtype=np.float64) @ weights)))
    return np.maximum(probabilities * (1.0 - probabilities), MIN_FISHER_WEIGHT)


def target_moment(diffs: np.ndarray, fisher: np.ndarray) -> np.ndarray:
    """Return A, the mean of f d d^T over target pairs, (D, D) float64, from diffs (T, D) and f (T,)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.shape[0] == 0:
        raise InputError("no target pairs: the variance reduction needs at least one pool pair.")
    return (diffs * fisher[:, None]).T @ diffs / diffs.shape[0]


def greedy_variance_reduction(
    diffs: np.ndarray,
    fisher: np.ndarray,
    covariance: np.ndarray,
    target: np.ndarray,
    k: int,
    *,
    groups: np.ndarray | None = None,
    max_per_group: int | None = None,
    conditioned: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick k rows of diffs greedily by the reduction of tr(target @ covariance), see the module doc.

    Args:
        diffs: (N, D) feature differences of the candidate pairs.
        fisher: (N,) Fisher weight p (1 - p) of each candidate.
        covariance: (D, D) posterior covariance C before the batch.
        target: (D, D) the target moment A.
        k: picks wanted.
        groups: (N,) group of each candidate (its prompt), or None.
        max_per_group: picks per group at most, or None. When the caps exclude every remaining
            candidate, they are lifted for the rest of the batch.
        conditioned: (diffs (M, D), fisher (M,), groups (M,) or None) of pairs already in the batch,
            which update C and count against the caps before the first pick.

    Returns:
        (rows, gains): (min(k, N),) int64 row positions in pick order, and (same,) float64 the gain
        of each pick when it was picked.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    n_rows = diffs.shape[0]
    k = min(int(k), n_rows)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0)

    covariance = np.array(covariance, dtype=np.float64)
    spread = covariance @ target @ covariance
    # Per candidate: x^T C x (its logit variance) and x^T C A C x (its reach into the targets).
    variance = np.einsum("ij,ij->i", diffs @ covariance, diffs)
    reach = np.einsum("ij,ij->i", diffs @ spread, diffs)
    noise = 1.0 / fisher

    open_rows = np.ones(n_rows, dtype=bool)
    picks_per_group: dict[int, int] = {}

    def count_pick(group: int) -> None:
        picks_per_group[group] = picks_per_group.get(group, 0) + 1
        if max_per_group is not None and picks_per_group[group] >= max_per_group:
            open_rows[groups == group] = False

    def update(vector: np.ndarray, vector_noise: float) -> None:
        nonlocal covariance, variance, reach
        direction = covariance @ vector
        u = direction / np.sqrt(vector_noise + vector @ direction)
        target_u = target @ u
        spread_u = covariance @ target_u
        along = diffs @ u
        reach = reach - 2.0 * along * (diffs @ spread_u) + along**2 * float(u @ target_u)
        variance = np.maximum(variance - along**2, 0.0)
        covariance = covariance - np.outer(u, u)

    if conditioned is not None:
        chosen_diffs, chosen_fisher, chosen_groups = conditioned
        for row in range(np.asarray(chosen_diffs).shape[0]):
            if groups is not None and chosen_groups is not None:
                count_pick(int(chosen_groups[row]))
            update(np.asarray(chosen_diffs[row], dtype=np.float64), 1.0 / float(chosen_fisher[row]))

    picked: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        if not open_rows.any():
            logger.info(
                "per-prompt cap of %s lifted: every remaining candidate is in a capped prompt", max_per_group
            )
            open_rows[:] = True
            open_rows[picked] = False
        gain = np.where(open_rows, np.maximum(reach, 0.0) / (noise + variance), -np.inf)
        row = int(np.argmax(gain))
        picked.append(row)
        gains.append(float(gain[row]))
        open_rows[row] = False
        if groups is not None:
            count_pick(int(groups[row]))
        update(diffs[row], float(noise[row]))
    return np.asarray(picked, dtype=np.int64), np.asarray(gains)


def select_variance_reduction(
    pool: CandidatePool,
    model: PreferenceModel | None,
    k: int,
    rng: np.random.Generator,
    *,
    max_per_prompt: int | None,
    chosen: np.ndarray | None = None,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    n_targets: int = DEFAULT_TARGETS,
) -> tuple[np.ndarray, np.ndarray]:
    """Select up to k pool pairs by greedy variance reduction, after the pairs in `chosen`.

    Args:
        pool: the candidate pool.
        model: the fitted preference model, or None for the prior (cold start).
        k: pairs to add to `chosen`.
        max_per_prompt: cap per prompt, counting `chosen`, or None.
        chosen: (M,) pool positions already in the batch, or None.

    Returns:
        (pairs, gains): (<= k,) int64 pool positions in pick order, none of them in `chosen`, and
        (same,) float64 the gain of each.
    """
    for name, value in (("max_candidates", max_candidates), ("n_targets", n_targets)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} is {value!r}, expected an integer >= 1.")
    chosen = np.empty(0, dtype=np.int64) if chosen is None else np.asarray(chosen, dtype=np.int64)

    if model is None:
        weights = None
        covariance = np.eye(pool.dim) / PRIOR_PRECISION
    else:
        if model.dim != pool.dim:
            raise InputError(
                f"the preference model was fitted on {model.dim}-dim features but the pool has "
                f"{pool.dim}: refit the model on features built the same way."
            )
        weights = model.map_weights
        covariance = model.posterior_covariance

    candidates = np.setdiff1d(np.arange(pool.n_pairs), chosen, assume_unique=True)
    if candidates.size > max_candidates:
        candidates = np.sort(rng.choice(candidates, max_candidates, replace=False))
    targets = rng.choice(pool.n_pairs, min(n_targets, pool.n_pairs), replace=False)
    target_diffs = pair_differences(pool, targets)
    target = target_moment(target_diffs, fisher_weights(target_diffs, weights))

    diffs = pair_differences(pool, candidates)
    chosen_diffs = pair_differences(pool, chosen)
    prompts = pool.pair_prompts()
    rows, gains = greedy_variance_reduction(
        diffs,
        fisher_weights(diffs, weights),
        covariance,
        target,
        k,
        groups=prompts[candidates],
        max_per_group=max_per_prompt,
        conditioned=(chosen_diffs, fisher_weights(chosen_diffs, weights), prompts[chosen]),
    )
    return candidates[rows], gains
