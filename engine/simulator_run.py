"""`prefscout simulate`: turn command-line options into a simulation, run it and write its files."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from acquisition import default_novelty_weight
from acquisition.modes import DEFAULT_MODE_THRESHOLD
from acquisition.policy import check_policy_name, strategy_uses_policy
from engine.errors import ConfigError
from engine.simulator import SimulationSettings, simulate
from engine.simulator_oracles import DEFAULT_SHARPNESS
from engine.simulator_report import write_outputs
from engine.simulator_setup import SimulationInput, build_simulation

logger = logging.getLogger(__name__)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """Parse KEY=VALUE strategy options; a VALUE that is JSON (1, 0.5, null, true) is decoded."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"--option {pair!r} is not KEY=VALUE, as in --option max_per_prompt=1.")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _check_options_used(options: dict[str, Any], strategies: list[str]) -> None:
    """Reject an --option that none of the strategies takes, so that a typo is not silently ignored."""
    from acquisition import get_strategy, strategy_options

    taken: set[str] = set()
    for name in strategies:
        get_strategy(name)  # an unknown name fails here, listing the known ones
        accepted = strategy_options(name)
        if accepted is None:
            return
        taken.update(accepted)
    unused = sorted(set(options) - taken)
    if unused:
        raise ConfigError(
            f"--option {', '.join(unused)} is taken by none of the strategies {', '.join(strategies)}; "
            f"they take: {', '.join(sorted(taken)) or '(no options)'}"
        )


def _policy_model_used(policy_model: str | None, strategies: list[str]) -> str | None:
    """Return --policy-model when some strategy scores novelty, else None (with a log line).

    A missing policy folder is rejected either way.
    """
    if policy_model is None:
        return None
    check_policy_name(policy_model)
    if any(strategy_uses_policy(name) for name in strategies):
        return policy_model
    logger.info(
        "none of the strategies %s scores novelty, so the policy model %s is not used",
        ", ".join(strategies), policy_model,
    )
    return None


def run_from_arguments(args: argparse.Namespace) -> Path:
    """Run the simulation that the parsed `simulate` options describe; return the summary.json path."""
    started = time.perf_counter()
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    repeated = sorted({name for name in strategies if strategies.count(name) > 1})
    if repeated:
        raise ConfigError(f"--strategies names {', '.join(repeated)} more than once; name each strategy once")
    options = parse_options(args.option)
    _check_options_used(options, strategies)
    policy_model = _policy_model_used(args.policy_model, strategies)
    spec = SimulationInput(
        outputs=args.outputs,
        oracle=args.oracle,
        embedding_cache=args.embedding_cache or args.out / "embeddings.npz",
        mode_field=args.mode_field,
        mode_threshold=DEFAULT_MODE_THRESHOLD if args.mode_threshold is None else args.mode_threshold,
        generator_feature=args.generator_feature,
        truncate=args.truncate,
        tail_chars=args.tail_chars,
        oracle_seed=args.oracle_seed,
        sharpness=DEFAULT_SHARPNESS if args.sharpness is None else args.sharpness,
        policy_model=policy_model,
        policy_cache=(args.policy_cache or args.out / "policy_logprobs.npz") if policy_model else None,
    )
    options.setdefault("novelty_weight", default_novelty_weight(spec.mode_field is not None))
    settings = SimulationSettings(
        strategies=strategies,
        budget=args.budget,
        rounds=args.rounds,
        seeds=args.seeds,
        first_seed=args.first_seed,
        heldout_fraction=args.heldout_fraction,
        n_members=args.members,
        l2=args.l2,
        options=options,
    )
    data, oracle, _ = build_simulation(spec)
    rows, references = simulate(data, oracle, settings)
    recorded = {**vars(spec), **vars(settings), "seconds": round(time.perf_counter() - started, 1)}
    paths = write_outputs(args.out, rows, references, recorded)
    return paths["summary"]
