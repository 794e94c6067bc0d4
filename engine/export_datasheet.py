"""The export's datasheet (JSON and Markdown) and its chart of prompt-cluster shares."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np

from engine.export_formats import COLUMNS, KTO_COLUMNS
from engine.workspace import ExportSettings

VOTE_POLICY = (
    "Each pair's non-skip votes are counted; skips never count.",
    "A strict majority (more than half, and at least min_agreement) for one response makes a row: "
    "that response is chosen.",
    "A tie majority makes no row in any format.",
    "A both-bad majority makes no preference row; the KTO files get both responses as undesirable, with weight 1.",
    "No strict majority, fewer than min_votes votes or agreement below min_agreement leaves the pair out.",
    "Chosen and rejected that differ only in whitespace are never emitted.",
)
_REPORT_LABELS = (
    ("rows", "rows"),
    ("chosen_shown_left_rate", "chosen shown on the left (0.5: no position bias)"),
    ("chosen_longer_rate", "chosen longer than rejected"),
    ("rare_mode_share", "chosen from a rare answer mode"),
)
MAX_LISTED_REJECTIONS = 50


def build_datasheet(
    pairs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    splits: dict[str, list[dict[str, Any]]],
    kto_splits: dict[str, list[dict[str, Any]]],
    excluded: Counter[str],
    options: ExportSettings,
    *,
    agreement: dict[str, Any],
    balance: dict[str, Any],
    rejected_rows: list[dict[str, str]],
) -> dict[str, Any]:
    votes = [outcome for pair in pairs for outcome in pair["outcomes"]]
    agreements = [row["agreement"] for row in rows]
    shown_left = sum(1 for row in rows if row["chosen_shown_left"])
    longer = sum(1 for row in rows if len(row["chosen"]) > len(row["rejected"]))
    kto_rows = [record for records in kto_splits.values() for record in records]
    weights = np.array([row["weight"] for row in rows], dtype=np.float64)
    return {
        "counts": {
            "pairs_with_votes": len(pairs),
            "votes": len(votes),
            "votes_by_outcome": dict(sorted(Counter(votes).items())),
            "rows": len(rows),
            "train_rows": len(splits["train"]),
            "test_rows": len(splits["test"]),
            "prompts": len({row["prompt_id"] for row in rows}),
            "train_prompts": len({row["prompt_id"] for row in splits["train"]}),
            "test_prompts": len({row["prompt_id"] for row in splits["test"]}),
            "excluded_pairs": dict(sorted(excluded.items())),
            "kto_rows": len(kto_rows),
            "kto_desirable": sum(1 for record in kto_rows if record["label"]),
            "kto_undesirable": sum(1 for record in kto_rows if not record["label"]),
        },
        "vote_policy": list(VOTE_POLICY),
        "agreement": {
            "mean": round(sum(agreements) / len(agreements), 6) if agreements else None,
            "unanimous_rows": sum(1 for value in agreements if value == 1.0),
            **agreement,
        },
        "position": {
            "chosen_shown_left": shown_left,
            "chosen_shown_left_rate": round(shown_left / len(rows), 6) if rows else None,
        },
        "length": {"chosen_longer_rate": round(longer / len(rows), 6) if rows else None},
        "chosen_models": _model_counts(row["chosen_model"] for row in rows),
        "rejected_models": _model_counts(row["rejected_model"] for row in rows),
        "rows_by_round": {str(key): value for key, value in sorted(Counter(row["round"] for row in rows).items())},
        "balance": balance,
        "weights": {
            "method": options.weighting,
            "min": round(float(weights.min()), 6) if len(weights) else None,
            "max": round(float(weights.max()), 6) if len(weights) else None,
            "rows_with_propensity": sum(1 for row in rows if row.get("propensity") is not None),
        },
        "rejected_rows": rejected_rows[:MAX_LISTED_REJECTIONS],
        "options": asdict(options),
        "files": {
            "train": ["train.jsonl", "train.parquet"],
            "test": ["test.jsonl", "test.parquet"],
            "columns": list(COLUMNS),
            "conversational": ["conversational/train.jsonl", "conversational/train.parquet",
                               "conversational/test.jsonl", "conversational/test.parquet"],
            "kto": ["kto/train.jsonl", "kto/train.parquet", "kto/test.jsonl", "kto/test.parquet"],
            "kto_columns": list(KTO_COLUMNS),
            "datasets": ["hf/standard", "hf/conversational", "hf/kto"],
            "chart": "cluster_shares.png",
        },
    }


def _model_counts(models) -> dict[str, int]:
    counts = Counter(model or "unknown" for model in models)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def cluster_chart_png(balance: dict[str, Any]) -> bytes:
    """Draw the share of rows per prompt cluster before balancing, after the caps and weighted; return PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [
        ("before (decisive pairs)", balance["before"]["cluster_shares"]),
        ("after caps (rows)", balance["after_rows"]["cluster_shares"]),
        ("after caps and weights", balance["after_weighted"]["cluster_shares"]),
    ]
    clusters = sorted({int(key) for _, shares in series for key in shares})
    figure = Figure(figsize=(max(6.0, 0.45 * len(clusters) + 2), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(clusters))
    width = 0.27
    for offset, (label, shares) in enumerate(series):
        values = [shares.get(str(cluster), 0.0) for cluster in clusters]
        axes.bar(positions + (offset - 1) * width, values, width, label=label)
    axes.set_xticks(positions, [str(cluster) for cluster in clusters])
    axes.set_xlabel("prompt cluster")
    axes.set_ylabel("share of rows (weight)")
    axes.set_title("Prompt-cluster shares before and after balancing")
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def render_datasheet(sheet: dict[str, Any]) -> str:
    """Render the datasheet as Markdown: contents, vote policy, agreement, balance, models, options."""
    lines = _contents_section(sheet)
    lines += ["", "## Vote policy", ""] + [f"- {rule}" for rule in sheet["vote_policy"]]
    lines += _agreement_section(sheet["agreement"])
    lines += _balance_section(sheet)
    lines += ["", "## Models", "", "| model | chosen | rejected |", "|---|---|---|"]
    for model in sorted(set(sheet["chosen_models"]) | set(sheet["rejected_models"])):
        lines.append(f"| {model} | {sheet['chosen_models'].get(model, 0)} | {sheet['rejected_models'].get(model, 0)} |")
    lines += ["", "## Options", "", "```json", json.dumps(sheet["options"], indent=2), "```", ""]
    return "\n".join(lines)


def _contents_section(sheet: dict[str, Any]) -> list[str]:
    counts = sheet["counts"]
    options = sheet["options"]
    cluster_cap = f", `per_cluster_cap` at most {options['max_rows_per_cluster']} per prompt cluster" if options["max_rows_per_cluster"] else ""
    lines = [
        "# Datasheet",
        "",
        "Pairwise preferences collected with prefscout, exported for DPO- and KTO-style training.",
        "`train.jsonl` / `.parquet` follow TRL's standard preference format (`prompt`, `chosen`, `rejected`);",
        "`conversational/` holds the same rows as lists of `{role, content}` messages, `kto/` the unpaired",
        "form (`prompt`, `completion`, `label`), and `hf/` each form as a `datasets.load_from_disk` folder.",
        f"Metadata columns: {', '.join('`' + name + '`' for name in sheet['files']['columns'][3:])}.",
        "`weight` has mean 1 over the rows; pass it to a trainer that accepts sample weights or use it",
        "to resample. TRL's trainers ignore it and drop the metadata columns.",
        "",
        "## Contents",
        "",
        "| | count |",
        "|---|---|",
        f"| pairs with votes | {counts['pairs_with_votes']} |",
        f"| votes | {counts['votes']} |",
        f"| rows | {counts['rows']} |",
        f"| train rows / prompts | {counts['train_rows']} / {counts['train_prompts']} |",
        f"| test rows / prompts | {counts['test_rows']} / {counts['test_prompts']} |",
        f"| KTO rows (desirable / undesirable) | {counts['kto_rows']} ({counts['kto_desirable']} / {counts['kto_undesirable']}) |",
        "",
        "Votes by outcome: " + _inline(counts["votes_by_outcome"]) + ".",
        "",
        "Pairs left out of the preference rows: " + (_inline(counts["excluded_pairs"]) or "none") + ".",
        f"The caps keep at most {options['max_pairs_per_prompt']} rows per prompt{cluster_cap}; rows they "
        "dropped are counted above as `per_prompt_cap` (and `per_cluster_cap`).",
    ]
    if sheet["rejected_rows"]:
        lines += ["", "Pairs rejected for their shape (first ones):", ""]
        lines += [f"- `{item['pair_id']}`: {item['reason']}" for item in sheet["rejected_rows"][:10]]
    return lines


def _agreement_section(agreement: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Agreement",
        "",
        f"- Mean agreement (share of non-skip votes for the chosen response): {agreement['mean']}",
        f"- Unanimous rows: {agreement['unanimous_rows']}",
        f"- Krippendorff's alpha (nominal, {agreement['pairs_with_two_or_more_votes']} pairs with two or more "
        f"votes): {agreement['krippendorff_alpha_nominal']}",
    ]
    if agreement["annotators_vs_majority"]:
        lines += ["", "| annotator | votes on pairs with a majority | agreement with the majority |", "|---|---|---|"]
        for annotator, values in agreement["annotators_vs_majority"].items():
            lines.append(f"| {annotator} | {values['votes']} | {values['rate']} |")
    return lines


def _balance_section(sheet: dict[str, Any]) -> list[str]:
    balance = sheet["balance"]
    strata = balance["strata"]
    weights = sheet["weights"]
    stages = ("before", "after_rows", "after_weighted")
    lines = [
        "",
        "## Balance",
        "",
        f"Prompt clusters: {strata['prompt_clusters']} ({strata['prompt_cluster_method']}). Response modes by "
        f"method (prompts): {_inline(strata['prompts_by_mode_method']) or 'none'}. A mode is rare when at most "
        f"{strata['rare_mode_share']} of its prompt's responses fall in it. Weights: {weights['method']}, "
        f"from {weights['min']} to {weights['max']}; {weights['rows_with_propensity']} rows have a selection propensity.",
        "",
        "| | before (decisive pairs) | after caps | after caps and weights |",
        "|---|---|---|---|",
    ]
    for key, label in _REPORT_LABELS:
        lines.append(f"| {label} | " + " | ".join(str(balance[stage][key]) for stage in stages) + " |")
    lines.append("| top chosen models | " + " | ".join(_top(balance[stage]["chosen_model_shares"]) for stage in stages) + " |")
    lines += ["", "![prompt-cluster shares](cluster_shares.png)"]
    return lines


def _top(shares: dict[str, float], count: int = 3) -> str:
    return ", ".join(f"{model} {share}" for model, share in list(shares.items())[:count]) or "none"


def _inline(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.items())
