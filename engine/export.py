"""Turn votes into a DPO training set (TRL's prompt / chosen / rejected columns) and its datasheet.

One row per pair whose non-skip votes have a strict majority for one response. Ties and both-bad
majorities never become rows, so chosen never equals rejected. Prompts go wholly to train or to test.
The same store and options give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import ConfigError
from engine.store import Store
from engine.workspace import ExportSettings, write_bytes_atomic, write_text_atomic

logger = logging.getLogger(__name__)

COLUMNS = (
    "prompt", "chosen", "rejected", "prompt_id", "chosen_id", "rejected_id", "chosen_model",
    "rejected_model", "n_votes", "agreement", "round", "pair_id", "chosen_shown_left",
)
_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
        ("prompt_id", pa.string()), ("chosen_id", pa.string()), ("rejected_id", pa.string()),
        ("chosen_model", pa.string()), ("rejected_model", pa.string()), ("n_votes", pa.int64()),
        ("agreement", pa.float64()), ("round", pa.int64()), ("pair_id", pa.string()),
        ("chosen_shown_left", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class Aggregate:
    outcome: str | None  # "a", "b", "tie", "both_bad", or None without a usable majority
    n_votes: int  # non-skip votes
    agreement: float  # share of non-skip votes for the majority outcome (0 without votes)
    reason: str | None  # why there is no outcome: too_few_votes, no_majority, low_agreement


def aggregate_votes(outcomes: list[str], *, min_votes: int = 1, min_agreement: float = 0.5) -> Aggregate:
    """Return the strict-majority outcome of one pair's votes; skips do not count."""
    counted = [outcome for outcome in outcomes if outcome != "skip"]
    if not counted or len(counted) < min_votes:
        return Aggregate(None, len(counted), 0.0, "too_few_votes")
    top, top_count = Counter(counted).most_common(1)[0]
    agreement = top_count / len(counted)
    if top_count * 2 <= len(counted):
        return Aggregate(None, len(counted), agreement, "no_majority")
    if agreement < min_agreement:
        return Aggregate(None, len(counted), agreement, "low_agreement")
    return Aggregate(top, len(counted), agreement, None)


@dataclass
class ExportSummary:
    out_dir: Path
    files: list[Path]
    datasheet: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.datasheet["counts"]["rows"])


def export_dataset(store: Store, out_dir: Path, options: ExportSettings) -> ExportSummary:
    """Aggregate the votes, balance, split and write JSON Lines, Parquet and the datasheet."""
    _check_options(options)
    pairs = _voted_pairs(store)
    excluded: Counter[str] = Counter()
    candidates: list[dict[str, Any]] = []
    for pair in pairs:
        aggregate = aggregate_votes(pair["outcomes"], min_votes=options.min_votes, min_agreement=options.min_agreement)
        if aggregate.outcome is None:
            excluded[aggregate.reason or "no_majority"] += 1
        elif aggregate.outcome in ("tie", "both_bad"):
            excluded[aggregate.outcome] += 1
        else:
            candidates.append(_row(pair, aggregate))

    rows, capped = _cap_per_prompt(candidates, options.max_pairs_per_prompt, options.seed)
    if capped:
        excluded["per_prompt_cap"] = capped
    test_prompts = _test_prompts(sorted({row["prompt_id"] for row in rows}), options.test_fraction, options.seed)
    splits = {
        "train": [row for row in rows if row["prompt_id"] not in test_prompts],
        "test": [row for row in rows if row["prompt_id"] in test_prompts],
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, split_rows in splits.items():
        files.append(out_dir / f"{name}.jsonl")
        write_text_atomic(files[-1], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows))
        files.append(out_dir / f"{name}.parquet")
        write_bytes_atomic(files[-1], _parquet_bytes(split_rows))

    datasheet = build_datasheet(pairs, rows, splits, excluded, options)
    files.append(out_dir / "datasheet.json")
    write_text_atomic(files[-1], json.dumps(datasheet, indent=2, ensure_ascii=False) + "\n")
    files.append(out_dir / "datasheet.md")
    write_text_atomic(files[-1], render_datasheet(datasheet))
    logger.info("exported %d rows (%d train, %d test) to %s", len(rows), len(splits["train"]), len(splits["test"]), out_dir)
    return ExportSummary(out_dir=out_dir, files=files, datasheet=datasheet)


def _check_options(options: ExportSettings) -> None:
    if not 0 <= options.test_fraction < 1:
        raise ConfigError(f"export test_fraction must be in [0, 1), got {options.test_fraction}")
    if options.max_pairs_per_prompt < 1:
        raise ConfigError(f"export max_pairs_per_prompt must be at least 1, got {options.max_pairs_per_prompt}")
    if options.min_votes < 1:
        raise ConfigError(f"export min_votes must be at least 1, got {options.min_votes}")
    if not 0 <= options.min_agreement <= 1:
        raise ConfigError(f"export min_agreement must be in [0, 1], got {options.min_agreement}")


def _voted_pairs(store: Store) -> list[dict[str, Any]]:
    """Return one dict per pair with at least one vote, with texts, models and outcomes."""
    outcomes: dict[str, list[str]] = defaultdict(list)
    for vote in store.votes():
        outcomes[vote["pair_id"]].append(vote["outcome"])
    if not outcomes:
        return []
    pairs = store.pairs(outcomes)
    responses = {
        response.row: response
        for response in store.responses({row for pair in pairs.values() for row in (pair.response_a, pair.response_b)})
    }
    prompts = store.prompt_texts()
    result = []
    for pair_id in sorted(pairs):
        pair = pairs[pair_id]
        result.append(
            {
                "pair": pair,
                "prompt_id": prompts[pair.prompt_row][0],
                "prompt": prompts[pair.prompt_row][1],
                "a": responses[pair.response_a],
                "b": responses[pair.response_b],
                "outcomes": outcomes[pair_id],
            }
        )
    return result


def _row(pair: dict[str, Any], aggregate: Aggregate) -> dict[str, Any]:
    chosen, rejected = (pair["a"], pair["b"]) if aggregate.outcome == "a" else (pair["b"], pair["a"])
    return {
        "prompt": pair["prompt"],
        "chosen": chosen.text,
        "rejected": rejected.text,
        "prompt_id": pair["prompt_id"],
        "chosen_id": chosen.response_id,
        "rejected_id": rejected.response_id,
        "chosen_model": chosen.model,
        "rejected_model": rejected.model,
        "n_votes": aggregate.n_votes,
        "agreement": round(aggregate.agreement, 6),
        "round": pair["pair"].round_id,
        "pair_id": pair["pair"].pair_id,
        "chosen_shown_left": pair["pair"].left_side == aggregate.outcome,
    }


def _seeded_key(seed: int, value: str) -> str:
    return hashlib.sha256(f"{seed}:{value}".encode("utf-8")).hexdigest()


def _cap_per_prompt(rows: list[dict[str, Any]], cap: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """Keep at most `cap` rows per prompt: highest agreement first, then most votes, then a seeded order."""
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt_id"]].append(row)
    kept, capped = [], 0
    for prompt_id in sorted(by_prompt):
        group = sorted(
            by_prompt[prompt_id],
            key=lambda row: (-row["agreement"], -row["n_votes"], _seeded_key(seed, row["pair_id"])),
        )
        kept.extend(group[:cap])
        capped += max(0, len(group) - cap)
    kept.sort(key=lambda row: (row["prompt_id"], row["pair_id"]))
    return kept, capped


def _test_prompts(prompt_ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """Pick the test prompts: a seeded hash order, at least one when there are two or more prompts."""
    if test_fraction <= 0 or len(prompt_ids) < 2:
        return set()
    count = min(len(prompt_ids) - 1, max(1, round(test_fraction * len(prompt_ids))))
    ordered = sorted(prompt_ids, key=lambda prompt_id: _seeded_key(seed, prompt_id))
    return set(ordered[:count])


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def build_datasheet(
    pairs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    splits: dict[str, list[dict[str, Any]]],
    excluded: Counter[str],
    options: ExportSettings,
) -> dict[str, Any]:
    votes = [outcome for pair in pairs for outcome in pair["outcomes"]]
    agreements = [row["agreement"] for row in rows]
    shown_left = sum(1 for row in rows if row["chosen_shown_left"])
    longer = sum(1 for row in rows if len(row["chosen"]) > len(row["rejected"]))
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
        },
        "agreement": {
            "mean": round(sum(agreements) / len(agreements), 6) if agreements else None,
            "unanimous_rows": sum(1 for value in agreements if value == 1.0),
        },
        "position": {
            "chosen_shown_left": shown_left,
            "chosen_shown_left_rate": round(shown_left / len(rows), 6) if rows else None,
        },
        "length": {"chosen_longer_rate": round(longer / len(rows), 6) if rows else None},
        "chosen_models": _model_counts(row["chosen_model"] for row in rows),
        "rejected_models": _model_counts(row["rejected_model"] for row in rows),
        "rows_by_round": {str(key): value for key, value in sorted(Counter(row["round"] for row in rows).items())},
        "options": asdict(options),
        "files": {
            "train": ["train.jsonl", "train.parquet"],
            "test": ["test.jsonl", "test.parquet"],
            "columns": list(COLUMNS),
        },
    }


def _model_counts(models) -> dict[str, int]:
    counts = Counter(model or "unknown" for model in models)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def render_datasheet(sheet: dict[str, Any]) -> str:
    counts = sheet["counts"]
    lines = [
        "# Datasheet",
        "",
        "Pairwise preferences collected with prefscout, exported for DPO-style training.",
        "Columns follow TRL's standard preference format (`prompt`, `chosen`, `rejected`) plus",
        f"metadata: {', '.join('`' + name + '`' for name in sheet['files']['columns'][3:])}.",
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
        "",
        "Votes by outcome: " + _inline(counts["votes_by_outcome"]) + ".",
        "",
        "Pairs left out: " + (_inline(counts["excluded_pairs"]) or "none") + ". Ties and both-bad majorities",
        "never become rows; `no_majority` means no outcome had more than half of the non-skip votes;",
        "`per_prompt_cap` rows were dropped to keep at most "
        f"{sheet['options']['max_pairs_per_prompt']} rows per prompt.",
        "",
        "## Agreement and bias",
        "",
        f"- Mean agreement (share of non-skip votes for the chosen response): {sheet['agreement']['mean']}",
        f"- Unanimous rows: {sheet['agreement']['unanimous_rows']}",
        f"- Chosen response had been shown on the left: {sheet['position']['chosen_shown_left']} rows "
        f"(rate {sheet['position']['chosen_shown_left_rate']}; 0.5 means no position bias)",
        f"- Chosen response longer than rejected: rate {sheet['length']['chosen_longer_rate']}",
        "",
        "## Models",
        "",
        "| model | chosen | rejected |",
        "|---|---|---|",
    ]
    models = sorted(set(sheet["chosen_models"]) | set(sheet["rejected_models"]))
    for model in models:
        lines.append(f"| {model} | {sheet['chosen_models'].get(model, 0)} | {sheet['rejected_models'].get(model, 0)} |")
    lines += [
        "",
        "## Options",
        "",
        "```json",
        json.dumps(sheet["options"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _inline(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.items())
