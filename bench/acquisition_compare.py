"""Compare each strategy with `random` round by round, paired by seed, from a simulation's rounds.csv.

Usage: .venv/bin/python bench/acquisition_compare.py RUN_DIR [--levels 0.80 0.85]

For every round it prints the mean difference strategy - random of held-out accuracy and
log-likelihood with a 95% normal interval over seeds, and flags rounds where the whole interval is
below 0. With --levels it also prints, per strategy, the mean labels needed to reach each held-out
accuracy level (seeds that never reach it are counted as not reached).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_rows(run_dir: Path) -> dict[str, dict[int, list[dict]]]:
    by_strategy: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    with (run_dir / "rounds.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_strategy[row["strategy"]][int(row["seed"])].append(row)
    return by_strategy


def paired(by_strategy: dict, strategy: str, metric: str) -> list[tuple[int, int, float, float, float]]:
    """Return (round, labels, mean difference, ci low, ci high) of strategy - random per round."""
    rounds = []
    seeds = sorted(set(by_strategy[strategy]) & set(by_strategy["random"]))
    n_rounds = min(len(by_strategy[strategy][seed]) for seed in seeds)
    for index in range(n_rounds):
        differences = np.array([
            float(by_strategy[strategy][seed][index][metric]) - float(by_strategy["random"][seed][index][metric])
            for seed in seeds
        ])
        half = 1.96 * differences.std(ddof=1) / math.sqrt(differences.size) if differences.size > 1 else 0.0
        labels = int(by_strategy[strategy][seeds[0]][index]["labels"])
        rounds.append((index + 1, labels, differences.mean(), differences.mean() - half, differences.mean() + half))
    return rounds


def labels_to_level(seed_rows: dict[int, list[dict]], level: float) -> tuple[float | None, int]:
    needed = []
    for rows in seed_rows.values():
        reached = [int(row["labels"]) for row in rows if float(row["accuracy"]) >= level]
        if reached:
            needed.append(reached[0])
    return (float(np.mean(needed)) if needed else None), len(needed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--levels", type=float, nargs="*", default=[])
    args = parser.parse_args()
    by_strategy = read_rows(args.run_dir)

    for strategy in by_strategy:
        if strategy == "random":
            continue
        for metric in ("accuracy", "log_likelihood"):
            rounds = paired(by_strategy, strategy, metric)
            below = [number for number, _, _, _, high in rounds if high < 0]
            worst = min(rounds, key=lambda item: item[2])
            print(
                f"{strategy} - random, {metric}: rounds with the interval below 0: {below or 'none'}; "
                f"lowest mean difference {worst[2]:+.3f} [{worst[3]:+.3f}, {worst[4]:+.3f}] at round {worst[0]} "
                f"({worst[1]} labels); last round {rounds[-1][2]:+.3f} [{rounds[-1][3]:+.3f}, {rounds[-1][4]:+.3f}]"
            )
    for level in args.levels:
        cells = []
        for strategy, seed_rows in by_strategy.items():
            mean, reached = labels_to_level(seed_rows, level)
            shown = "not reached" if mean is None else f"{mean:.0f}"
            cells.append(f"{strategy} {shown} ({reached}/{len(seed_rows)} seeds)")
        print(f"labels to reach accuracy {level:.2f}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
