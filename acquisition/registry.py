"""Acquisition strategies by name, and `select_batch`, the one entry point the round loop calls."""

from __future__ import annotations

import inspect
import logging
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from acquisition.pool import CandidatePool, Selection
from engine.errors import ConfigError, InputError, UnknownStrategyError

if TYPE_CHECKING:
    from engine.preference import PreferenceModel

logger = logging.getLogger(__name__)


class Strategy(Protocol):
    """A strategy selects min(k, N) pairs from a non-empty pool, 1 <= k <= N.

    `select_batch` validates the pool, k and the option names, and handles k == 0 and empty pools,
    so a strategy receives only keyword options that its signature declares.
    """

    def __call__(
        self,
        pool: CandidatePool,
        k: int,
        rng: np.random.Generator,
        *,
        model: PreferenceModel | None = None,
        **options: object,
    ) -> Selection: ...


_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, strategy: Strategy, *, replace: bool = False) -> Strategy:
    """Register `strategy` under `name` and return it.

    Registering an existing name raises ConfigError unless `replace` is True.
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"strategy name is {name!r}, expected a non-empty string.")
    if name in _STRATEGIES and not replace:
        raise ConfigError(
            f"strategy {name!r} is already registered: pick another name or pass replace=True."
        )
    _STRATEGIES[name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """Return the strategy registered under `name`, or raise UnknownStrategyError listing the names."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown acquisition strategy {name!r}: expected one of {', '.join(strategy_names())}."
        ) from None


def strategy_names() -> list[str]:
    """Return the registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def select_batch(
    strategy: str,
    pool: CandidatePool,
    k: int,
    rng: np.random.Generator,
    *,
    model: PreferenceModel | None = None,
    **options: object,
) -> Selection:
    """Select a batch of min(k, N) pairs from the pool with the named strategy.

    Args:
        strategy: a name from `strategy_names()`.
        pool: the candidate pool.
        k: batch size, >= 0. A pool with fewer pairs comes back whole, and an empty pool or k == 0
            gives an empty Selection.
        rng: the only source of randomness, tie-breaking included.
        model: the fitted preference model, or None before the first decisive votes.
        options: keyword options of that strategy, for example `max_per_prompt` or `uncertainty`.
    """
    selector = get_strategy(strategy)
    if not isinstance(pool, CandidatePool):
        raise InputError(f"pool is a {type(pool).__name__}, expected a CandidatePool.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"k is {k!r}, expected an integer >= 0 (the batch size).")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng is a {type(rng).__name__}, expected a numpy.random.Generator such as "
            "numpy.random.default_rng(seed)."
        )
    _check_options(strategy, selector, options)

    k = min(int(k), pool.n_pairs)
    if k == 0:
        return Selection.empty()

    started = time.perf_counter()
    selection = selector(pool, k, rng, model=model, **options)
    logger.info(
        "strategy %s selected %d of %d pairs in %.2f s",
        strategy,
        len(selection),
        pool.n_pairs,
        time.perf_counter() - started,
    )
    return selection


def strategy_options(name: str) -> list[str] | None:
    """Return the keyword options the named strategy takes, or None when it takes any."""
    parameters = inspect.signature(get_strategy(name)).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return None
    return [
        parameter.name
        for parameter in parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "model"
    ]


def _check_options(name: str, selector: Strategy, options: dict[str, object]) -> None:
    accepted = strategy_options(name)
    if accepted is None:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"strategy {name!r} has no option {', '.join(map(repr, unknown))}: "
            f"expected one of {', '.join(accepted) or '(no options)'}."
        )
