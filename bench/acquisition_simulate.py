"""Run the acquisition benchmarks of docs/benchmarks.md with `prefscout simulate` and print their tables.

Usage: .venv/bin/python bench/acquisition_simulate.py [mtbench math pandalm] [--seeds 10]

Embeddings come from bench/.cache/ (run bench/acquisition_embed.py first, or let the first run
embed). Results go to bench/.cache/runs/NAME/, and each learning-curve figure is copied to
docs/figures/acquisition-NAME.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from acquisition_common import CACHE, CORPORA, PANDALM_VOTES, REPO

from engine.cli import main as prefscout

FIGURES = REPO / "docs" / "figures"


def runs(seeds: int) -> dict[str, list[str]]:
    """Return the exact `prefscout simulate` arguments of each benchmark, by name."""
    common = ["--seeds", str(seeds)]
    mtbench, math, pandalm = CORPORA["mtbench"], CORPORA["math"], CORPORA["pandalm"]
    return {
        # 300 labels per round up to 4,800, so labels-to-target is reached within the budget.
        "mtbench": [
            "--outputs", str(mtbench.outputs), "--oracle", "bt-synthetic", "--truncate",
            "--embedding-cache", str(mtbench.cache),
            "--strategies", "hybrid,uncertainty,random",
            "--budget", "300", "--rounds", "16", "--members", "4", "--l2", "0.1", *common,
        ],
        # random alone, twice as long (9,600 labels), so that every seed reaches the target.
        "mtbench-random": [
            "--outputs", str(mtbench.outputs), "--oracle", "bt-synthetic", "--truncate",
            "--embedding-cache", str(mtbench.cache),
            "--strategies", "random",
            "--budget", "300", "--rounds", "32", "--members", "4", "--l2", "0.1", *common,
        ],
        "math": [
            "--outputs", str(math.outputs), "--oracle", "correctness", "--tail-chars", str(math.tail_chars),
            "--embedding-cache", str(math.cache), "--mode-field", "answer_key", "--generator-feature",
            "--strategies", "hybrid,uncertainty,novelty,random",
            "--budget", "74", "--rounds", "4", "--option", "max_per_prompt=1", *common,
        ],
        # The same, with hybrid's novelty weight at 1: optimistic novelty only, no uncertainty term.
        "math-optimistic": [
            "--outputs", str(math.outputs), "--oracle", "correctness", "--tail-chars", str(math.tail_chars),
            "--embedding-cache", str(math.cache), "--mode-field", "answer_key", "--generator-feature",
            "--strategies", "hybrid,random",
            "--budget", "74", "--rounds", "4", "--option", "max_per_prompt=1", "--option", "novelty_weight=1.0",
            *common,
        ],
        "pandalm": [
            "--outputs", str(pandalm.outputs), "--oracle", f"votes:{PANDALM_VOTES}",
            "--embedding-cache", str(pandalm.cache), "--generator-feature",
            "--strategies", "hybrid,uncertainty,novelty,random",
            "--budget", "20", "--rounds", "20", *common,
        ],
    }


def table(summary: dict) -> str:
    lines = [
        "| strategy | labels to target (95% CI; seeds reaching) | final accuracy | final log-lik | mode coverage | rare-correct recall |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in summary["strategies"].items():
        target = entry["labels_to_target"]
        recall = entry.get("rare_correct_recall")
        lines.append(
            f"| {name} | {_fmt(target, 0)} ({target['seeds_reaching_target']}/{target['seeds']}) "
            f"| {_fmt(entry['final_accuracy'])} | {_fmt(entry['heldout_loglik'][-1])} "
            f"| {_fmt(entry['mode_coverage'])} | {_fmt(recall) if recall else 'n/a'} |"
        )
    return "\n".join(lines)


def _fmt(value: dict, digits: int = 3) -> str:
    if value["mean"] is None:
        return "not reached"
    low, high = value["ci95"]
    if low is None:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=["mtbench", "mtbench-random", "math", "math-optimistic", "pandalm"])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        out = CACHE / "runs" / name
        arguments = ["simulate", *runs(args.seeds)[name], "--out", str(out)]
        print("prefscout " + " ".join(arguments), flush=True)
        if prefscout(arguments) != 0:
            sys.exit(f"benchmark {name} failed")
        shutil.copyfile(out / "learning_curves.png", FIGURES / f"acquisition-{name}.png")
        print(table(json.loads((out / "summary.json").read_text(encoding="utf-8"))), flush=True)


if __name__ == "__main__":
    main()
