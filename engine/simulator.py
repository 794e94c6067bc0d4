"""Offline acquisition simulator: rounds of selection answered by an oracle, without Label Studio.

For each seed, the prompts are split once into a pool and a held-out set that never enters the
pool, and every strategy runs the same rounds on that split: fit the preference model on the
decisive votes so far, select `budget` pairs, ask the oracle, and evaluate the refitted model on the
held-out pairs. Held-out accuracy counts pairs where the oracle has a direction (p(a) != 0.5) and
the model's p(a beats b) is on the same side of 0.5. The held-out log-likelihood is the expected
log-likelihood of one oracle vote, p log q + (1 - p) log(1 - q), averaged over the same pairs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acquisition import CandidatePool, get_strategy, select_batch, strategy_options
from acquisition.modes import prompt_mode_keys
from engine.errors import ConfigError
from engine.preference import EPSILON, PreferenceModel
from engine.simulator_oracles import Oracle

logger = logging.getLogger(__name__)

# Rare-correct problems: the correct answer is given by at most this share of the responses.
RARE_CORRECT_SHARE = 0.25

# The whole-pool reference model, whose accuracy sets the labels-to-target threshold, trains on at
# most this many pairs, a uniform sample of the pool beyond it, so its Newton steps stay seconds.
REFERENCE_MAX_LABELS = 30_000

# Held-out pairs evaluated per seed at most (a uniform sample beyond it).
HELDOUT_MAX_PAIRS = 20_000

TARGET_SHARE = 0.95  # labels-to-target: first round reaching this share of the reference accuracy


@dataclass(frozen=True)
class SimulationData:
    """Everything a simulation reads, as arrays over response positions.

    Attributes:
        embeddings: (R, D) float32, L2-normalised.
        response_prompt: (R,) int64 prompt position of each response.
        pair_a, pair_b: (N,) int64 every candidate pair (pool and held-out prompts together).
        modes: (R,) int64 mode label of each response.
        features: (R, F) float32 preference-model features, or None for the embeddings.
        correct: (R,) bool from the oracle's field, read only by the rare-correct metric, or None.
        policy_logprob: (R,) float64 mean token log-probability of each response under a policy
            model, given to every candidate pool, or None.
    """

    embeddings: np.ndarray
    response_prompt: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    modes: np.ndarray
    features: np.ndarray | None = None
    correct: np.ndarray | None = None
    policy_logprob: np.ndarray | None = None

    @property
    def preference_features(self) -> np.ndarray:
        return self.embeddings if self.features is None else self.features


@dataclass(frozen=True)
class SimulationSettings:
    strategies: list[str]
    budget: int  # pairs per round
    rounds: int
    seeds: int
    first_seed: int = 0
    heldout_fraction: float = 0.2  # share of prompts held out, never in the pool
    n_members: int = 8  # ensemble size of the preference model
    l2: float = 1.0  # L2 penalty of the preference model (PreferenceModel's l2)
    options: dict[str, Any] = field(default_factory=dict)  # strategy options, given to those taking them

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("no strategies given: pass --strategies hybrid,random (for example).")
        for name in self.strategies:
            get_strategy(name)
        for label, value in (("budget", self.budget), ("rounds", self.rounds), ("seeds", self.seeds)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{label} is {value!r}, expected an integer >= 1.")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(
                f"--heldout-fraction is {self.heldout_fraction!r}, expected a value strictly between 0 and 1."
            )


@dataclass
class SeedSplit:
    """One seed's pool and held-out pairs, shared by every strategy of that seed."""

    pool_pairs: np.ndarray  # (N_pool,) int64 positions into SimulationData.pair_a / pair_b
    heldout_pairs: np.ndarray  # (N_test,) int64, same index space
    heldout_preference: np.ndarray  # (N_test,) float64 oracle p(a preferred)
    reference_accuracy: float | None
    rare_correct_prompts: np.ndarray  # (P_rare,) int64 pool prompts whose correct answer is rare
    pool_mode_keys: np.ndarray  # (K,) int64 distinct (prompt, mode) keys of the pool's responses


def simulate(
    data: SimulationData, oracle: Oracle, settings: SimulationSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every strategy for every seed and return (per-round rows, per-seed reference rows)."""
    rows: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    for seed in range(settings.first_seed, settings.first_seed + settings.seeds):
        split = split_seed(data, oracle, seed, settings)
        references.append({"seed": seed, "reference_accuracy": split.reference_accuracy,
                           "pool_pairs": int(split.pool_pairs.size), "heldout_pairs": int(split.heldout_pairs.size)})
        for strategy in settings.strategies:
            started = time.perf_counter()
            rows.extend(run_strategy(data, oracle, split, strategy, seed, settings))
            logger.info("seed %d, %s: %d rounds in %.1f s", seed, strategy, settings.rounds,
                        time.perf_counter() - started)
    return rows, references


def split_seed(data: SimulationData, oracle: Oracle, seed: int, settings: SimulationSettings) -> SeedSplit:
    """Hold out a share of the prompts, and fit the whole-pool reference model for this seed."""
    rng = np.random.default_rng([seed, 0])
    pair_prompt = data.response_prompt[data.pair_a]
    prompts = np.unique(pair_prompt)
    n_heldout = min(max(1, round(settings.heldout_fraction * prompts.size)), prompts.size - 1)
    if n_heldout < 1:
        raise ConfigError("the candidate pairs cover one prompt only: a held-out split needs at least two.")
    heldout_prompts = rng.permutation(prompts)[:n_heldout]
    is_heldout = np.isin(pair_prompt, heldout_prompts)

    pool_pairs = np.flatnonzero(~is_heldout)
    heldout_pairs = np.flatnonzero(is_heldout)
    preference = oracle.preference(data.pair_a[heldout_pairs], data.pair_b[heldout_pairs])
    directed = preference != 0.5
    heldout_pairs, preference = heldout_pairs[directed], preference[directed]
    if heldout_pairs.size > HELDOUT_MAX_PAIRS:
        keep = np.sort(rng.choice(heldout_pairs.size, HELDOUT_MAX_PAIRS, replace=False))
        heldout_pairs, preference = heldout_pairs[keep], preference[keep]

    split = SeedSplit(
        pool_pairs=pool_pairs,
        heldout_pairs=heldout_pairs,
        heldout_preference=preference,
        reference_accuracy=None,
        rare_correct_prompts=_rare_correct_prompts(data, pool_pairs),
        pool_mode_keys=np.unique(_mode_keys(data)[_pool_responses(data, pool_pairs)]),
    )
    split.reference_accuracy = _reference_accuracy(data, oracle, split, seed, settings.l2)
    logger.info(
        "seed %d: %d pool pairs, %d held-out pairs, reference accuracy %s",
        seed, pool_pairs.size, heldout_pairs.size, split.reference_accuracy,
    )
    return split


def run_strategy(
    data: SimulationData,
    oracle: Oracle,
    split: SeedSplit,
    strategy: str,
    seed: int,
    settings: SimulationSettings,
) -> list[dict[str, Any]]:
    """Run the rounds of one strategy on one seed's split and return one metrics row per round."""
    strategy_rng = np.random.default_rng([seed, 1])
    oracle_rng = np.random.default_rng([seed, 2])
    accepted = strategy_options(strategy)
    options = {key: value for key, value in settings.options.items() if accepted is None or key in accepted}

    remaining = split.pool_pairs.copy()
    seen = np.zeros(data.embeddings.shape[0], dtype=bool)
    voted_pairs: list[np.ndarray] = []
    voted_outcomes: list[np.ndarray] = []
    model: PreferenceModel | None = None
    rows = []
    for round_index in range(1, settings.rounds + 1):
        pool = CandidatePool(
            data.embeddings,
            data.response_prompt,
            data.pair_a[remaining],
            data.pair_b[remaining],
            seen,
            modes=data.modes,
            features=data.features,
            policy_logprob=data.policy_logprob,
        )
        started = time.perf_counter()
        selection = select_batch(strategy, pool, settings.budget, strategy_rng, model=model, **options)
        selection_seconds = time.perf_counter() - started

        picked = remaining[selection.indices]
        outcomes = oracle.vote(data.pair_a[picked], data.pair_b[picked], oracle_rng)
        remaining = np.setdiff1d(remaining, picked, assume_unique=True)
        seen[data.pair_a[picked]] = True
        seen[data.pair_b[picked]] = True
        voted_pairs.append(picked)
        voted_outcomes.append(outcomes)

        all_pairs = np.concatenate(voted_pairs)
        all_outcomes = np.concatenate(voted_outcomes)
        model = fit_on_votes(data, all_pairs, all_outcomes, seed, settings.n_members, settings.l2)
        accuracy, log_likelihood = evaluate(data, model, split)
        rows.append({
            "strategy": strategy,
            "seed": seed,
            "round": round_index,
            "labels": int(all_pairs.size),
            "decisive_labels": int(np.isin(all_outcomes, ("a", "b")).sum()),
            "accuracy": accuracy,
            "log_likelihood": log_likelihood,
            "mode_coverage": mode_coverage(data, split, seen),
            "rare_correct_recall": rare_correct_recall(data, split, all_pairs, all_outcomes),
            "selection_seconds": selection_seconds,
        })
        if remaining.size == 0:
            logger.info("seed %d, %s: pool exhausted after round %d", seed, strategy, round_index)
            break
    return rows


def fit_on_votes(
    data: SimulationData, pairs: np.ndarray, outcomes: np.ndarray, seed: int, n_members: int, l2: float
) -> PreferenceModel | None:
    """Fit the preference model on the decisive votes (ties and both_bad excluded), or None below 2."""
    decisive = np.isin(outcomes, ("a", "b"))
    if decisive.sum() < 2:
        return None
    features = data.preference_features
    diffs = features[data.pair_a[pairs[decisive]]] - features[data.pair_b[pairs[decisive]]]
    labels = (outcomes[decisive] == "a").astype(np.float64)
    return PreferenceModel(n_members=n_members, l2=l2, seed=seed).fit(diffs, labels)


def evaluate(data: SimulationData, model: PreferenceModel | None, split: SeedSplit) -> tuple[float, float]:
    """Return (held-out accuracy, mean expected log-likelihood); no model predicts p = 0.5."""
    pairs = split.heldout_pairs
    preference = split.heldout_preference
    if pairs.size == 0:
        return float("nan"), float("nan")
    if model is None:
        predicted = np.full(pairs.size, 0.5)
    else:
        features = data.preference_features
        predicted = model.predict_proba(features[data.pair_a[pairs]] - features[data.pair_b[pairs]])
    predicted = np.clip(predicted, EPSILON, 1.0 - EPSILON)
    accuracy = float(np.mean((predicted > 0.5) == (preference > 0.5)))
    log_likelihood = preference * np.log(predicted) + (1.0 - preference) * np.log1p(-predicted)
    return accuracy, float(log_likelihood.mean())


def mode_coverage(data: SimulationData, split: SeedSplit, seen: np.ndarray) -> float:
    """Share of the pool's distinct (prompt, mode) combinations shown at least once."""
    if split.pool_mode_keys.size == 0:
        return float("nan")
    shown = np.unique(_mode_keys(data)[seen])
    return float(np.isin(split.pool_mode_keys, shown).mean())


def rare_correct_recall(
    data: SimulationData, split: SeedSplit, pairs: np.ndarray, outcomes: np.ndarray
) -> float:
    """Share of rare-correct pool prompts where a correct response won a voted pair.

    A rare-correct prompt has a correct answer given by at most RARE_CORRECT_SHARE of its
    responses, so any correct response of it is a correct minority response. NaN without a
    `correct` field.
    """
    if data.correct is None or split.rare_correct_prompts.size == 0:
        return float("nan")
    winners = np.where(outcomes == "a", data.pair_a[pairs], data.pair_b[pairs])
    decisive = np.isin(outcomes, ("a", "b"))
    winners = winners[decisive]
    found = np.unique(data.response_prompt[winners[data.correct[winners]]])
    return float(np.isin(split.rare_correct_prompts, found).mean())


def _rare_correct_prompts(data: SimulationData, pool_pairs: np.ndarray) -> np.ndarray:
    if data.correct is None:
        return np.empty(0, dtype=np.int64)
    prompts = np.unique(data.response_prompt[data.pair_a[pool_pairs]])
    n_prompts = int(data.response_prompt.max()) + 1
    total = np.bincount(data.response_prompt, minlength=n_prompts)
    correct = np.bincount(data.response_prompt, weights=data.correct.astype(np.float64), minlength=n_prompts)
    share = np.divide(correct, total, out=np.zeros(n_prompts), where=total > 0)
    rare = (correct > 0) & (share <= RARE_CORRECT_SHARE)
    return prompts[rare[prompts]]


def _mode_keys(data: SimulationData) -> np.ndarray:
    return prompt_mode_keys(data.modes, data.response_prompt)


def _pool_responses(data: SimulationData, pool_pairs: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([data.pair_a[pool_pairs], data.pair_b[pool_pairs]]))


def _reference_accuracy(
    data: SimulationData, oracle: Oracle, split: SeedSplit, seed: int, l2: float
) -> float | None:
    """Held-out accuracy of a model trained on one oracle vote per pool pair (a sample beyond the cap)."""
    rng = np.random.default_rng([seed, 3])
    pairs = split.pool_pairs
    if pairs.size > REFERENCE_MAX_LABELS:
        pairs = rng.choice(pairs, REFERENCE_MAX_LABELS, replace=False)
    outcomes = oracle.vote(data.pair_a[pairs], data.pair_b[pairs], rng)
    model = fit_on_votes(data, pairs, outcomes, seed, 1, l2)
    if model is None:
        return None
    return evaluate(data, model, split)[0]
