"""Acquisition: score candidate pairs for novelty and uncertainty and select a batch to annotate.

Plain numpy arrays in and out. `select_batch(name, pool, k, rng, model=...)` is the entry point;
importing this package registers the built-in strategies (random, novelty, uncertainty, hybrid,
stochastic).
"""

from acquisition import strategies as _strategies  # noqa: F401  (registers the built-in strategies)
from acquisition.modes import cluster_modes, mode_rarity, modes_from_values, shown_modes
from acquisition.policy import load_policy, mean_token_logprob
from acquisition.pool import CandidatePool, Selection
from acquisition.registry import (
    Strategy,
    get_strategy,
    register_strategy,
    select_batch,
    strategy_names,
    strategy_options,
)
from acquisition.scores import (
    bald,
    distance_to_seen,
    information_gain,
    pair_novelty,
    pair_uncertainty,
    predictive_entropy,
    rank_within_prompt,
    response_novelty_scores,
    reward_optimism,
    scale_by_rank,
    within_prompt_rarity,
)
from acquisition.selectors import k_center_greedy, sample_by_score, select_diverse, select_top_k
from acquisition.strategies import DEFAULT_STRATEGY, default_novelty_weight
from acquisition.variance import greedy_variance_reduction, select_variance_reduction

__all__ = [
    "DEFAULT_STRATEGY",
    "CandidatePool",
    "Selection",
    "Strategy",
    "bald",
    "cluster_modes",
    "default_novelty_weight",
    "distance_to_seen",
    "get_strategy",
    "greedy_variance_reduction",
    "information_gain",
    "k_center_greedy",
    "load_policy",
    "mean_token_logprob",
    "mode_rarity",
    "modes_from_values",
    "pair_novelty",
    "pair_uncertainty",
    "predictive_entropy",
    "rank_within_prompt",
    "register_strategy",
    "response_novelty_scores",
    "reward_optimism",
    "sample_by_score",
    "scale_by_rank",
    "select_batch",
    "select_diverse",
    "select_top_k",
    "select_variance_reduction",
    "shown_modes",
    "strategy_names",
    "strategy_options",
    "within_prompt_rarity",
]
