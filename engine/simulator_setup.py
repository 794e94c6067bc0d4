"""Build a simulation from an outputs file: embeddings, candidate pairs, modes, features and the oracle.

This is the layer behind `prefscout simulate`; `engine.simulator` runs the rounds on arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acquisition.modes import DEFAULT_MODE_THRESHOLD
from acquisition.policy import check_policy_name
from engine.errors import InputError
from engine.response_features import check_mode_field, generator_features, response_modes
from engine.simulator import SimulationData
from engine.simulator_corpus import SimulationCorpus, embed_with_cache, policy_logprob_with_cache, read_corpus
from engine.simulator_oracles import (
    DEFAULT_SHARPNESS,
    CorrectnessOracle,
    Oracle,
    RecordedVotesOracle,
    SyntheticOracle,
    parse_oracle,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationInput:
    outputs: Path
    oracle: str  # votes:FILE, correctness or bt-synthetic
    embedding_cache: Path
    mode_field: str | None = None
    mode_threshold: float = DEFAULT_MODE_THRESHOLD
    generator_feature: bool = False
    truncate: bool = False
    tail_chars: int | None = None
    embedding_model: str | None = None
    oracle_seed: int = 0
    sharpness: float = DEFAULT_SHARPNESS
    policy_model: str | None = None  # causal LM whose log-probabilities scale novelty, or None
    policy_cache: Path | None = None  # .npz cache of those log-probabilities, or None for no cache


def build_simulation(spec: SimulationInput) -> tuple[SimulationData, Oracle, SimulationCorpus]:
    """Read, embed (through the cache) and assemble the arrays and oracle of one simulation."""
    check_mode_field(spec.mode_field)  # before the slow steps
    if spec.policy_model is not None:
        check_policy_name(spec.policy_model)
    kind, votes_path = parse_oracle(spec.oracle)
    corpus = read_corpus(spec.outputs)
    embeddings = embed_with_cache(
        corpus.texts,
        spec.embedding_cache,
        model_name=spec.embedding_model,
        truncate=spec.truncate,
        tail_chars=spec.tail_chars,
    )

    if kind == "votes":
        oracle: Oracle = RecordedVotesOracle.from_file(votes_path, corpus)
        pair_a, pair_b = oracle.pair_a, oracle.pair_b
    else:
        pair_a, pair_b = distinct_pairs(corpus)
        if kind == "correctness":
            oracle = CorrectnessOracle.from_corpus(corpus)
        else:
            oracle = SyntheticOracle.build(embeddings, pair_a, pair_b, seed=spec.oracle_seed, sharpness=spec.sharpness)

    modes = response_modes(
        embeddings, corpus.response_prompt, corpus.metadata, mode_field=spec.mode_field, threshold=spec.mode_threshold
    )
    features = generator_features(embeddings, corpus.models) if spec.generator_feature else None
    policy_logprob = None
    if spec.policy_model is not None:
        # Novelty ranks log-probabilities within a prompt, so only prompts with pairs are scored.
        scored = np.isin(corpus.response_prompt, corpus.response_prompt[pair_a])
        policy_logprob = policy_logprob_with_cache(corpus, scored, spec.policy_model, spec.policy_cache)
    correct = None
    if kind == "correctness":
        correct = oracle.correct
    data = SimulationData(
        embeddings=embeddings,
        response_prompt=corpus.response_prompt,
        pair_a=pair_a,
        pair_b=pair_b,
        modes=modes,
        features=features,
        correct=correct,
        policy_logprob=policy_logprob,
    )
    logger.info(
        "simulation: %d responses, %d prompts, %d candidate pairs, %d distinct modes",
        corpus.n_responses, len(corpus.prompt_ids), pair_a.size, np.unique(modes).size,
    )
    return data, oracle, corpus


def distinct_pairs(corpus: SimulationCorpus) -> tuple[np.ndarray, np.ndarray]:
    """Return (a, b) response positions of every pair of two different texts to one prompt, a < b."""
    firsts, seconds = [], []
    order = np.argsort(corpus.response_prompt, kind="stable")
    boundaries = np.flatnonzero(np.diff(corpus.response_prompt[order])) + 1
    for members in np.split(order, boundaries):
        if members.size < 2:
            continue
        upper_i, upper_j = np.triu_indices(members.size, k=1)
        first, second = members[upper_i], members[upper_j]
        different = np.array([corpus.texts[a] != corpus.texts[b] for a, b in zip(first, second)], dtype=bool)
        firsts.append(first[different])
        seconds.append(second[different])
    if not firsts:
        raise InputError("no prompt has two different responses, so there is no pair to simulate.")
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)

