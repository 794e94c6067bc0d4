"""Files the simulator writes: per-round metrics (CSV), learning curves (PNG) and summary.json.

Intervals are 95% normal intervals over seeds: mean +- 1.96 * standard deviation / sqrt(seeds),
collapsed to the mean for a single value.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.simulator import TARGET_SHARE

ROUND_COLUMNS = (
    "strategy", "seed", "round", "labels", "decisive_labels", "accuracy", "log_likelihood",
    "mode_coverage", "rare_correct_recall", "selection_seconds",
)


def interval(values: list[float]) -> dict[str, Any]:
    """Return {"mean", "ci95": [lo, hi], "n"} over the finite values.

    The interval is null with fewer than two values, because one value gives no spread to measure.
    """
    finite = np.asarray([value for value in values if value is not None and math.isfinite(value)], dtype=float)
    if finite.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = float(finite.mean())
    if finite.size == 1:
        return {"mean": mean, "ci95": [None, None], "n": 1}
    half = 1.96 * float(finite.std(ddof=1)) / math.sqrt(finite.size)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(finite.size)}


def labels_to_target(rows: list[dict[str, Any]], reference: dict[int, float | None]) -> list[float | None]:
    """Per seed, the labels at the first round whose accuracy reaches TARGET_SHARE of the reference.

    A seed that never reaches it within the simulated rounds gives None.
    """
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], []).append(row)
    needed: list[float | None] = []
    for seed, seed_rows in sorted(by_seed.items()):
        target = reference.get(seed)
        if target is None:
            needed.append(None)
            continue
        reached = [row["labels"] for row in sorted(seed_rows, key=lambda row: row["round"])
                   if row["accuracy"] >= TARGET_SHARE * target]
        needed.append(float(reached[0]) if reached else None)
    return needed


def summarise(rows: list[dict[str, Any]], references: list[dict[str, Any]]) -> dict[str, Any]:
    """Build summary.json: {"strategies": {NAME: {...}}} with intervals over seeds."""
    reference = {entry["seed"]: entry["reference_accuracy"] for entry in references}
    summary: dict[str, Any] = {"strategies": {}}
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        strategy_rows = [row for row in rows if row["strategy"] == strategy]
        last_round = _last_rows(strategy_rows)
        needed = labels_to_target(strategy_rows, reference)
        entry: dict[str, Any] = {
            "labels_to_target": {
                **interval([value for value in needed if value is not None]),
                "seeds_reaching_target": sum(value is not None for value in needed),
                "seeds": len(needed),
            },
            "final_accuracy": interval([row["accuracy"] for row in last_round]),
            "heldout_loglik": _per_round(strategy_rows, "log_likelihood"),
            "heldout_accuracy": _per_round(strategy_rows, "accuracy"),
            "mode_coverage": interval([row["mode_coverage"] for row in last_round]),
            "selection_seconds": interval([row["selection_seconds"] for row in strategy_rows]),
        }
        recall = [row["rare_correct_recall"] for row in last_round]
        if any(math.isfinite(value) for value in recall):
            entry["rare_correct_recall"] = interval(recall)
            entry["rare_correct_recall_per_round"] = _per_round(strategy_rows, "rare_correct_recall")
            entry["mode_coverage_per_round"] = _per_round(strategy_rows, "mode_coverage")
        summary["strategies"][strategy] = entry
    return summary


def write_outputs(
    out_dir: Path, rows: list[dict[str, Any]], references: list[dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Path]:
    """Write rounds.csv, summary.json, run.json and learning_curves.png into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "rounds": out_dir / "rounds.csv",
        "summary": out_dir / "summary.json",
        "run": out_dir / "run.json",
        "curves": out_dir / "learning_curves.png",
    }
    with paths["rounds"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in ROUND_COLUMNS} for row in rows)

    summary = summarise(rows, references)
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    run = {"settings": settings, "references": references, "target_share": TARGET_SHARE}
    paths["run"].write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    plot_curves(rows, paths["curves"])
    return paths


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Plot mean +- 95% interval over seeds against labels, one panel per metric that has values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("accuracy", "held-out accuracy"), ("log_likelihood", "held-out log-likelihood per vote")]
    for metric, title in (("rare_correct_recall", "rare-correct recall"), ("mode_coverage", "mode coverage")):
        if any(math.isfinite(row[metric]) for row in rows):
            metrics.append((metric, title))

    figure, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for axis, (metric, title) in zip(axes[0], metrics):
        for strategy in dict.fromkeys(row["strategy"] for row in rows):
            curve = _per_round([row for row in rows if row["strategy"] == strategy], metric)
            labels = [point["labels"] for point in curve if point["mean"] is not None]
            means = [point["mean"] for point in curve if point["mean"] is not None]
            lows = [_bound(point, 0) for point in curve if point["mean"] is not None]
            highs = [_bound(point, 1) for point in curve if point["mean"] is not None]
            (line,) = axis.plot(labels, means, marker=".", label=strategy)
            axis.fill_between(labels, lows, highs, color=line.get_color(), alpha=0.15)
        axis.set_title(title)
        axis.set_xlabel("labels")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _per_round(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    points = []
    for round_index in sorted({row["round"] for row in rows}):
        round_rows = [row for row in rows if row["round"] == round_index]
        labels = int(np.median([row["labels"] for row in round_rows]))
        points.append({"round": round_index, "labels": labels, **interval([row[metric] for row in round_rows])})
    return points


def _last_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["seed"] not in last or row["round"] > last[row["seed"]]["round"]:
            last[row["seed"]] = row
    return list(last.values())


def _bound(point: dict[str, Any], side: int) -> float:
    """Return one end of a point's interval, or its mean where the interval is null (one seed)."""
    value = point["ci95"][side]
    return point["mean"] if value is None else value
