"""The candidate pool that acquisition reads and the selection that it returns.

Index spaces: a *response position* indexes `CandidatePool.embeddings`, a *pair position* indexes
`CandidatePool.pair_a` / `pair_b`, and a *prompt position* is a value of `response_prompt`. None of
them is a workspace id, so the caller converts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine.errors import InputError

# Pairs per block when pair features are computed: 32,768 pairs x 384 float32 dims is 48 MiB, so a
# 1M-pair pool never holds an (N, D) array.
PAIR_BLOCK_SIZE = 32_768

# Largest accepted deviation of an embedding's L2 norm from 1 (float32 rounding is about 1e-7).
NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CandidatePool:
    """Responses to choose from and the candidate pairs built from them.

    Attributes:
        embeddings: (R, D) float32, L2-normalised response embeddings.
        response_prompt: (R,) int64, prompt position of each response.
        pair_a: (N,) int64, response positions of the first response of each pair.
        pair_b: (N,) int64, response positions of the second response, a different response to the
            same prompt.
        seen: (R,) bool, True for responses already shown to annotators in earlier rounds.
        modes: (R,) int64 mode label of each response, or None. Two responses to one prompt share a
            mode when they give the same answer (an answer field) or fall in one cluster. Labels
            are compared within a prompt only. With modes, novelty is mode rarity and coverage.
        features: (R, F) float32 features of the preference model, or None for the embeddings.
            Acquisition scores uncertainty on these (for example embeddings joined with a one-hot
            of the generator model), and novelty always on the embeddings.
        policy_logprob: (R,) float64 mean token log-probability of each response under a policy
            model, or None. When given, responses the policy rarely samples count as more novel.

    The constructor validates shapes, ranges and normalisation, raises `InputError` on a violation
    and converts the arrays to the dtypes above.
    """

    embeddings: np.ndarray
    response_prompt: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    seen: np.ndarray
    modes: np.ndarray | None = None
    features: np.ndarray | None = None
    policy_logprob: np.ndarray | None = None

    def __post_init__(self) -> None:
        embeddings = _as_embeddings(self.embeddings)
        n_responses = embeddings.shape[0]
        response_prompt = _as_index_array("response_prompt", self.response_prompt)
        pair_a = _as_index_array("pair_a", self.pair_a)
        pair_b = _as_index_array("pair_b", self.pair_b)
        seen = np.asarray(self.seen)

        if response_prompt.shape != (n_responses,):
            raise InputError(
                f"response_prompt has shape {response_prompt.shape}, expected ({n_responses},): "
                "pass one prompt position per row of embeddings."
            )
        if seen.dtype != np.bool_ or seen.shape != (n_responses,):
            raise InputError(
                f"seen has dtype {seen.dtype} and shape {seen.shape}, expected bool ({n_responses},): "
                "pass one flag per row of embeddings."
            )
        if pair_a.shape != pair_b.shape:
            raise InputError(
                f"pair_a has shape {pair_a.shape} but pair_b has shape {pair_b.shape}: "
                "pass one response position per pair in each."
            )
        _check_pairs(pair_a, pair_b, response_prompt, n_responses)

        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "response_prompt", response_prompt)
        object.__setattr__(self, "pair_a", pair_a)
        object.__setattr__(self, "pair_b", pair_b)
        object.__setattr__(self, "seen", seen)
        object.__setattr__(self, "modes", _optional_modes(self.modes, n_responses))
        object.__setattr__(self, "features", _optional_features(self.features, n_responses))
        object.__setattr__(self, "policy_logprob", _optional_logprob(self.policy_logprob, n_responses))

    @property
    def n_pairs(self) -> int:
        return int(self.pair_a.shape[0])

    @property
    def dim(self) -> int:
        """Dimension of the preference model's features (the embedding dimension by default)."""
        return int(self.preference_features.shape[1])

    @property
    def preference_features(self) -> np.ndarray:
        """Features the preference model reads, (R, F): `features`, or the embeddings when None."""
        return self.embeddings if self.features is None else self.features

    def pair_prompts(self, pairs: np.ndarray | None = None) -> np.ndarray:
        """Return the prompt position of each pair, (N,) int64, or of `pairs` only."""
        first = self.pair_a if pairs is None else self.pair_a[pairs]
        return self.response_prompt[first]


@dataclass(frozen=True)
class Selection:
    """A batch of pairs chosen by a strategy, in the order the strategy picked them.

    Attributes:
        indices: (k,) int64, unique pair positions into the pool.
        scores: (k,) float64, acquisition score of each selected pair (finite).
        novelty: (k,) float64, novelty score, NaN where the strategy did not compute it.
        uncertainty: (k,) float64, uncertainty score, NaN where the strategy did not compute it.
        propensity: (k,) float64, probability that the draw which picked the pair picked it, NaN
            when the selection is deterministic.
    """

    indices: np.ndarray
    scores: np.ndarray
    novelty: np.ndarray
    uncertainty: np.ndarray
    propensity: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @classmethod
    def empty(cls) -> Selection:
        return cls(
            indices=np.empty(0, dtype=np.int64),
            scores=np.empty(0),
            novelty=np.empty(0),
            uncertainty=np.empty(0),
            propensity=np.empty(0),
        )

    @classmethod
    def build(
        cls,
        indices: np.ndarray,
        scores: np.ndarray,
        *,
        novelty: np.ndarray | None = None,
        uncertainty: np.ndarray | None = None,
        propensity: np.ndarray | None = None,
    ) -> Selection:
        """Build a selection from pool-wide score arrays, (N,) each, gathered at `indices`.

        `propensity` is already per selected pair, (k,). A score array left as None becomes NaN.
        """
        indices = np.asarray(indices, dtype=np.int64)
        missing = np.full(indices.shape[0], np.nan)
        return cls(
            indices=indices,
            scores=np.asarray(scores, dtype=np.float64)[indices],
            novelty=missing if novelty is None else np.asarray(novelty, dtype=np.float64)[indices],
            uncertainty=(
                missing.copy()
                if uncertainty is None
                else np.asarray(uncertainty, dtype=np.float64)[indices]
            ),
            propensity=(
                missing.copy() if propensity is None else np.asarray(propensity, dtype=np.float64)
            ),
        )


def iter_pair_blocks(n_pairs: int, block_size: int = PAIR_BLOCK_SIZE) -> Iterator[slice]:
    """Yield consecutive slices of at most `block_size` pair positions covering `n_pairs`."""
    for start in range(0, n_pairs, block_size):
        yield slice(start, min(start + block_size, n_pairs))


def pair_differences(pool: CandidatePool, pairs: np.ndarray | slice) -> np.ndarray:
    """Return phi(a) - phi(b) of the preference features for the given pairs, (n, F) float32."""
    features = pool.preference_features
    return features[pool.pair_a[pairs]] - features[pool.pair_b[pairs]]


def pair_features(pool: CandidatePool, pairs: np.ndarray) -> np.ndarray:
    """Return the L2-normalised mean of the two embeddings of each pair, (n, D) float32.

    The mean is symmetric in a and b, and its cosine distance to another pair's mean grows when
    either response differs, which is what k-center diversity needs. A pair of opposite embeddings
    has a zero mean and keeps the zero vector.
    """
    means = pool.embeddings[pool.pair_a[pairs]] + pool.embeddings[pool.pair_b[pairs]]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    np.divide(means, norms, out=means, where=norms > 0)
    return means


def _as_embeddings(values: np.ndarray) -> np.ndarray:
    embeddings = np.ascontiguousarray(values, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise InputError(
            f"embeddings has shape {embeddings.shape}, expected (R, D) with D >= 1: "
            "pass one embedding row per response."
        )
    if not np.isfinite(embeddings).all():
        raise InputError("embeddings contains NaN or infinite values: re-embed those responses.")

    norms = np.linalg.norm(embeddings, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise InputError(
            f"embeddings row {int(bad[0])} has L2 norm {float(norms[bad[0]]):.4f}, expected 1 "
            f"({bad.size} rows off): embed with normalize_embeddings=True or call faiss.normalize_L2."
        )
    return embeddings


def _optional_modes(values: np.ndarray | None, n_responses: int) -> np.ndarray | None:
    if values is None:
        return None
    modes = _as_index_array("modes", values)
    if modes.shape != (n_responses,):
        raise InputError(
            f"modes has shape {modes.shape}, expected ({n_responses},): pass one mode label per "
            "response, or None."
        )
    return modes


def _optional_features(values: np.ndarray | None, n_responses: int) -> np.ndarray | None:
    if values is None:
        return None
    features = np.ascontiguousarray(values, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != n_responses or features.shape[1] == 0:
        raise InputError(
            f"features has shape {features.shape}, expected ({n_responses}, F) with F >= 1: pass "
            "one feature row per response, or None to use the embeddings."
        )
    if not np.isfinite(features).all():
        raise InputError("features contains NaN or infinite values: rebuild the preference features.")
    return features


def _optional_logprob(values: np.ndarray | None, n_responses: int) -> np.ndarray | None:
    if values is None:
        return None
    logprob = np.asarray(values, dtype=np.float64)
    if logprob.shape != (n_responses,) or not np.isfinite(logprob).all():
        raise InputError(
            f"policy_logprob has shape {logprob.shape} (finite values required), expected "
            f"({n_responses},): pass one mean token log-probability per response, or None."
        )
    return logprob


def _as_index_array(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise InputError(
            f"{name} has dtype {array.dtype} and shape {array.shape}, expected a 1-D integer array."
        )
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_pairs(
    pair_a: np.ndarray, pair_b: np.ndarray, response_prompt: np.ndarray, n_responses: int
) -> None:
    if response_prompt.size and response_prompt.min() < 0:
        raise InputError(
            f"response_prompt contains {int(response_prompt.min())}, expected prompt positions >= 0."
        )
    if pair_a.size == 0:
        return

    for name, side in (("pair_a", pair_a), ("pair_b", pair_b)):
        low, high = int(side.min()), int(side.max())
        if low < 0 or high >= n_responses:
            bad = low if low < 0 else high
            raise InputError(
                f"{name} contains response position {bad}, expected 0 <= position < {n_responses}."
            )

    same = np.flatnonzero(pair_a == pair_b)
    if same.size:
        raise InputError(
            f"pair {int(same[0])} pairs response {int(pair_a[same[0]])} with itself "
            f"({same.size} such pairs): a pair needs two different responses."
        )

    crossed = np.flatnonzero(response_prompt[pair_a] != response_prompt[pair_b])
    if crossed.size:
        i = int(crossed[0])
        raise InputError(
            f"pair {i} joins responses {int(pair_a[i])} and {int(pair_b[i])} of prompts "
            f"{int(response_prompt[pair_a[i]])} and {int(response_prompt[pair_b[i]])} "
            f"({crossed.size} such pairs): both responses of a pair must answer the same prompt."
        )
