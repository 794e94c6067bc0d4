"""Acquisition scorers: pure functions that return one finite score per response or pair.

Higher always means more informative. Novelty comes from FAISS neighbours and never searches the
whole corpus: each response is compared with the other responses to its own prompt, and with the
responses already seen, which one small index holds. Uncertainty comes from the preference model.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Literal

import numpy as np

from acquisition.modes import mode_rarity, prompt_mode_keys, shown_modes
from acquisition.pool import CandidatePool, iter_pair_blocks, pair_differences
from engine.errors import ConfigError, InputError

if TYPE_CHECKING:
    from types import ModuleType

    from engine.preference import PreferenceModel

logger = logging.getLogger(__name__)

UncertaintyMeasure = Literal["bald", "entropy", "infogain"]
UNCERTAINTY_MEASURES: tuple[str, ...] = ("bald", "entropy", "infogain")

# BALD is the default per-pair measure (the `uncertainty` and `hybrid` strategies default to the
# batch measure of acquisition/variance.py): it is the ensemble's disagreement (epistemic
# uncertainty) only. Entropy also
# peaks on pairs the model rightly calls a coin flip, such as two near-identical responses that
# annotators would mark as a tie. Information gain ignores the model's predictions and measures
# feature coverage, which novelty already rewards.
DEFAULT_UNCERTAINTY: UncertaintyMeasure = "bald"

DEFAULT_NEIGHBORS = 10

# With modes, a pair earns MODE_COVERAGE_WEIGHT per mode it shows for the first time (0, 1 or 2)
# on top of its more novel response, so a pair that covers two new modes ranks above one that
# covers one. It also earns TYPICAL_PARTNER_WEIGHT times the prompt share of its less rare
# response's mode. Comparing a rare answer with the common one shows whether the rare one is
# better, and such a vote is decisive more often than a vote between two rare answers.
MODE_COVERAGE_WEIGHT = 0.25
TYPICAL_PARTNER_WEIGHT = 0.5
# A pair of two responses in one mode shows one answer only, so its score is halved.
SAME_MODE_FACTOR = 0.5

# With modes, a response that no ensemble member rates best in its prompt keeps this share of its
# novelty, so novelty still orders the pairs of prompts where the model favours the usual answer.
OPTIMISM_FLOOR = 0.1

# Policy unlikelihood scales response novelty between this floor (the policy's most likely
# response of the prompt) and 1 (its least likely), so it reorders novel responses without
# vetoing any of them.
POLICY_FLOOR = 0.5

_faiss_module: ModuleType | None = None


def load_faiss() -> ModuleType:
    """Import faiss once and set its OpenMP threads to the CPUs this process may run on."""
    global _faiss_module
    if _faiss_module is None:
        try:
            import faiss
        except ImportError as error:
            raise ConfigError(
                "faiss is not installed: install prefscout[cpu] (faiss-cpu) or prefscout[gpu] "
                "(faiss-gpu), never both."
            ) from error
        faiss.omp_set_num_threads(_available_cpus())
        _faiss_module = faiss
    return _faiss_module


def within_prompt_rarity(
    embeddings: np.ndarray, response_prompt: np.ndarray, *, n_neighbors: int = DEFAULT_NEIGHBORS
) -> np.ndarray:
    """Score each response by 1 - mean cosine similarity to its nearest responses of the same prompt.

    Args:
        embeddings: (R, D) float32, L2-normalised.
        response_prompt: (R,) prompt position of each response.
        n_neighbors: neighbours per response, reduced to n - 1 for a prompt with n responses.

    Returns:
        (R,) float64 in [0, 2]. A prompt with one response gives it 0.0, because no pair contains it.
    """
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ConfigError(f"n_neighbors is {n_neighbors!r}, expected an integer >= 1.")
    faiss = load_faiss()
    rarity = np.zeros(embeddings.shape[0])

    order = np.argsort(response_prompt, kind="stable")
    _, starts, counts = np.unique(response_prompt[order], return_index=True, return_counts=True)
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        members = order[start : start + count]
        vectors = np.ascontiguousarray(embeddings[members], dtype=np.float32)
        k = int(min(n_neighbors, count - 1))
        similarities, labels = faiss.knn(vectors, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        neighbor_similarities = _drop_self(similarities, labels, k)
        rarity[members] = 1.0 - neighbor_similarities.mean(axis=1)
    return np.clip(rarity, 0.0, 2.0)


def distance_to_seen(
    embeddings: np.ndarray, seen: np.ndarray, *, responses: np.ndarray | None = None
) -> np.ndarray:
    """Score each response by 1 - max cosine similarity to the seen responses.

    Args:
        embeddings: (R, D) float32, L2-normalised.
        seen: (R,) bool, responses already shown to annotators.
        responses: response positions to score, or None for all R. The others get NaN.

    Returns:
        (R,) float64 in [0, 2]. All are 1.0 when nothing is seen, and a seen response gets 0.0.
    """
    faiss = load_faiss()
    queried = np.arange(embeddings.shape[0]) if responses is None else np.asarray(responses)
    distance = np.full(embeddings.shape[0], np.nan)
    if not seen.any():
        distance[queried] = 1.0
        return distance

    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings[seen], dtype=np.float32))
    similarities, _ = index.search(np.ascontiguousarray(embeddings[queried], dtype=np.float32), 1)
    distance[queried] = np.clip(1.0 - similarities[:, 0], 0.0, 2.0)
    return distance


def response_novelty(rarity: np.ndarray, seen_distance: np.ndarray) -> np.ndarray:
    """Combine within-prompt rarity and distance to the seen responses, (R,) each, by product.

    A response counts as novel only when it is both rare among its prompt's responses and unlike
    everything annotators have seen, and a product needs no common scale for the two factors. A
    seen response scores 0.0, and with nothing seen the score is the rarity.
    """
    return rarity * seen_distance


def pair_novelty_from_responses(novelty: np.ndarray, pair_a: np.ndarray, pair_b: np.ndarray) -> np.ndarray:
    """Score each pair by the higher novelty of its two responses, (N,).

    The max keeps a pair that contains one rare response as high as that response, so pairing a
    rare response with a common one (the comparison that shows whether the rare answer is better)
    is never diluted by an average.
    """
    return np.maximum(novelty[pair_a], novelty[pair_b])


def pair_novelty(
    pool: CandidatePool, *, n_neighbors: int = DEFAULT_NEIGHBORS, optimism: np.ndarray | None = None
) -> np.ndarray:
    """Score every pair of the pool for novelty, (N,) float64, finite and >= 0.

    Without modes, a response's novelty is its within-prompt rarity times its distance to the seen
    responses, and a pair takes the higher novelty of its two responses. With modes (see
    `mode_pair_novelty`), rarity and coverage are counted in modes.

    Args:
        pool: the candidate pool.
        n_neighbors: neighbours of the embedding rarity (unused with modes).
        optimism: (R,) values in [0, 1], for example `reward_optimism`, or None. Without modes
            they multiply each response's novelty, and with modes each pair's score by the value
            of its rarer response.
    """
    novelty = response_novelty_scores(pool, n_neighbors=n_neighbors)
    if pool.modes is None:
        if optimism is not None:
            novelty = novelty * optimism
        return pair_novelty_from_responses(novelty, pool.pair_a, pool.pair_b)
    return mode_pair_novelty(pool, novelty, optimism=optimism)


def response_novelty_scores(pool: CandidatePool, *, n_neighbors: int = DEFAULT_NEIGHBORS) -> np.ndarray:
    """Score each response of the pool for novelty, (R,) float64, finite and >= 0.

    With modes: mode rarity (1 - share of the prompt's responses in the mode) for a response whose
    (prompt, mode) has not been shown yet, else 0. Without: within-prompt embedding rarity times
    the distance to the seen responses. With `pool.policy_logprob`, the score is also scaled by how
    unlikely the response is under the policy among its prompt's responses (`POLICY_FLOOR` to 1).
    Responses that are in no pair get 0.
    """
    if pool.modes is not None:
        rarity = mode_rarity(pool.modes, pool.response_prompt)
        novelty = np.where(shown_modes(pool.modes, pool.response_prompt, pool.seen), 0.0, rarity)
    else:
        in_pairs = np.unique(np.concatenate([pool.pair_a, pool.pair_b]))
        rarity = within_prompt_rarity(pool.embeddings, pool.response_prompt, n_neighbors=n_neighbors)
        seen_distance = distance_to_seen(pool.embeddings, pool.seen, responses=in_pairs)
        novelty = np.nan_to_num(response_novelty(rarity, seen_distance), nan=0.0)

    if pool.policy_logprob is not None:
        unlikelihood = rank_within_prompt(-pool.policy_logprob, pool.response_prompt)
        novelty = novelty * (POLICY_FLOOR + (1.0 - POLICY_FLOOR) * unlikelihood)
    return novelty


def mode_pair_novelty(
    pool: CandidatePool, novelty: np.ndarray, *, optimism: np.ndarray | None = None
) -> np.ndarray:
    """Score pairs from response novelty (R,) and the pool's modes, (N,) float64.

    The score is the higher response novelty, plus MODE_COVERAGE_WEIGHT per mode the pair would
    show for the first time, plus TYPICAL_PARTNER_WEIGHT times the share of the prompt's responses
    in the mode of the pair's less rare response. A pair whose two responses share a mode counts
    that mode once and gets SAME_MODE_FACTOR times the sum. With `optimism` (R,), the score is
    multiplied by the optimism of the pair's rarer response, so the coverage and partner terms
    count only as much as the chance that the rare answer is the better one.
    """
    if pool.modes is None:
        raise InputError("mode_pair_novelty needs a pool with modes: pass modes= to CandidatePool.")
    keys = prompt_mode_keys(pool.modes, pool.response_prompt)
    unshown = ~shown_modes(pool.modes, pool.response_prompt, pool.seen)
    same_mode = keys[pool.pair_a] == keys[pool.pair_b]

    rarity = mode_rarity(pool.modes, pool.response_prompt)
    best = np.maximum(novelty[pool.pair_a], novelty[pool.pair_b])
    new_modes = unshown[pool.pair_a].astype(np.float64) + np.where(same_mode, 0.0, unshown[pool.pair_b])
    partner_share = 1.0 - np.minimum(rarity[pool.pair_a], rarity[pool.pair_b])
    scores = best + MODE_COVERAGE_WEIGHT * new_modes + TYPICAL_PARTNER_WEIGHT * partner_share
    scores = np.where(same_mode, SAME_MODE_FACTOR * scores, scores)
    if optimism is not None:
        rarer = np.where(rarity[pool.pair_a] >= rarity[pool.pair_b], pool.pair_a, pool.pair_b)
        scores = scores * optimism[rarer]
    return scores


def reward_optimism(pool: CandidatePool, model: PreferenceModel) -> np.ndarray:
    """Score how promising each response is among its prompt's responses, (R,) in [0, 1].

    With modes, the score is OPTIMISM_FLOOR plus (1 - OPTIMISM_FLOOR) times the share of ensemble
    members under which the response has the highest reward of its prompt (its probability of
    being the best). A minority answer that the model rates above the majority then scores near 1,
    and any other response near the floor, so novelty times this score puts first the rare answers
    that may be right. Without modes, the score is the rank of the optimistic reward (ensemble mean
    plus one standard deviation) among the prompt's responses.
    """
    if model.dim != pool.dim:
        raise InputError(
            f"the preference model was fitted on {model.dim}-dim features but the pool has "
            f"{pool.dim}: refit the model on features built the same way."
        )
    member_rewards = pool.preference_features.astype(np.float64) @ model.weights.T  # (R, M)
    if pool.modes is None:
        upper = member_rewards.mean(axis=1) + member_rewards.std(axis=1)
        return rank_within_prompt(upper, pool.response_prompt)

    best_share = np.zeros(member_rewards.shape[0])
    for member in range(member_rewards.shape[1]):
        best_share += rank_within_prompt(member_rewards[:, member], pool.response_prompt) == 1.0
    best_share /= member_rewards.shape[1]
    return OPTIMISM_FLOOR + (1.0 - OPTIMISM_FLOOR) * best_share


def rank_within_prompt(values: np.ndarray, response_prompt: np.ndarray) -> np.ndarray:
    """Map values (R,) to [0, 1] by rank among the responses of the same prompt, (R,) float64.

    The lowest value of a prompt gets 0 and the highest 1. Ties get consecutive ranks in position
    order. A response alone in its prompt gets 1.
    """
    values = np.asarray(values, dtype=np.float64)
    response_prompt = np.asarray(response_prompt, dtype=np.int64)
    if values.size == 0:
        return np.empty(0)
    order = np.lexsort((values, response_prompt))
    sorted_prompts = response_prompt[order]
    is_start = np.concatenate([[True], sorted_prompts[1:] != sorted_prompts[:-1]])
    group_start = np.maximum.accumulate(np.where(is_start, np.arange(values.size), 0))
    group_size = np.bincount(response_prompt)[sorted_prompts]
    rank = (np.arange(values.size) - group_start) / np.maximum(group_size - 1, 1)
    rank = np.where(group_size == 1, 1.0, rank)
    ranks = np.empty(values.size)
    ranks[order] = rank
    return ranks


def predictive_entropy(member_probabilities: np.ndarray) -> np.ndarray:
    """Return the entropy in nats of the ensemble mean p(a beats b), (N,), from (M, N)."""
    return _binary_entropy(member_probabilities.mean(axis=0))


def bald(member_probabilities: np.ndarray) -> np.ndarray:
    """Return BALD, the entropy of the mean minus the mean member entropy, (N,), from (M, N).

    It is the mutual information between the vote and the member, so it is high only where the
    members disagree. Float rounding can make it slightly negative, so it is clipped at 0.
    """
    mean_entropy = _binary_entropy(member_probabilities).mean(axis=0)
    return np.maximum(predictive_entropy(member_probabilities) - mean_entropy, 0.0)


def information_gain(diffs: np.ndarray, information_inverse: np.ndarray) -> np.ndarray:
    """Return d^T V^-1 d for each row of diffs (N, D), given V^-1 (D, D).

    With V = lambda * I + sum of d d^T over the voted pairs, this is the variance of a linear
    Bradley-Terry model's logit on d, the quantity Active Preference Optimization maximises.
    """
    return np.einsum("ij,ij->i", diffs @ information_inverse, diffs, dtype=np.float64)


def pair_uncertainty(
    pool: CandidatePool, model: PreferenceModel, *, uncertainty: str = DEFAULT_UNCERTAINTY
) -> np.ndarray:
    """Score every pair of the pool for uncertainty under `model`, (N,) float64, finite and >= 0.

    Pair differences are built in blocks of PAIR_BLOCK_SIZE pairs, so memory stays bounded for
    a pool of a million pairs.
    """
    if uncertainty not in UNCERTAINTY_MEASURES:
        raise ConfigError(
            f"uncertainty is {uncertainty!r}, expected one of {', '.join(UNCERTAINTY_MEASURES)}."
        )
    if model.dim != pool.dim:
        raise InputError(
            f"the preference model was fitted on {model.dim}-dim features but the pool has "
            f"{pool.dim}: refit the model on features from the same embedding model (and the "
            "same generator features, if any)."
        )

    information_inverse = None
    if uncertainty == "infogain":
        # float32 like the pair differences, so each block is multiplied without a float64 copy.
        information_inverse = np.linalg.inv(model.information_matrix).astype(np.float32)

    scores = np.empty(pool.n_pairs)
    for block in iter_pair_blocks(pool.n_pairs):
        diffs = pair_differences(pool, block)
        if information_inverse is not None:
            scores[block] = information_gain(diffs, information_inverse)
            continue
        probabilities = model.member_probabilities(diffs)
        if uncertainty == "bald":
            scores[block] = bald(probabilities)
        else:
            scores[block] = predictive_entropy(probabilities)
    return np.maximum(scores, 0.0)


def scale_by_rank(scores: np.ndarray) -> np.ndarray:
    """Map scores (N,) to [0, 1] by rank: the lowest gets 0, the highest 1, ties share their mean rank.

    A single score maps to 1.0.
    """
    if scores.size == 0:
        return np.empty(0)
    if scores.size == 1:
        return np.ones(1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mean_rank = first_rank + (counts - 1) / 2.0
    return mean_rank[inverse] / (scores.size - 1)


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _drop_self(similarities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own row from a (n, k + 1) self-search and return (n, k) similarities.

    With exact duplicates a query may not list itself, because an equal-similarity duplicate can
    take its place. The last column is dropped then, which leaves the same k similarity values.
    """
    n = labels.shape[0]
    is_self = labels == np.arange(n)[:, None]
    missing_self = ~is_self.any(axis=1)
    is_self[missing_self, -1] = True
    return similarities[~is_self].reshape(n, k)


def _binary_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, 1e-12, 1.0 - 1e-12)
    return -(p * np.log(p) + (1.0 - p) * np.log1p(-p))
