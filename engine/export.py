"""Turn votes into a balanced preference training set and its datasheet.

The steps: aggregate each pair's votes (the policy is in `engine.export_votes`). Turn each voted
pair into texts (`engine.export_shapes` handles conversations, echoed prompts and whitespace-only
differences). Assign strata and balance (`engine.export_balance`), then split by prompt. Write the
TRL standard, conversational and KTO forms (`engine.export_formats`) and the datasheet
(`engine.export_datasheet`). The same store and options give byte-identical files.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.export_balance import (
    WEIGHTINGS,
    balance_weights,
    cap_per_cluster,
    cap_per_prompt,
    cluster_prompts,
    default_cluster_count,
    distribution_report,
    response_modes,
    seeded_key,
)
from engine.export_datasheet import build_datasheet, cluster_chart_png, render_datasheet
from engine.export_formats import COLUMNS, KTO_COLUMNS, kto_records, standard_record, write_formats
from engine.export_shapes import PreferenceTexts, check_preference_rows, preference_texts
from engine.export_votes import Aggregate, aggregate_votes, agreement_report
from engine.store import Store
from engine.workspace import ExportSettings, write_bytes_atomic, write_text_atomic

__all__ = ["COLUMNS", "KTO_COLUMNS", "Aggregate", "ExportSummary", "aggregate_votes", "export_dataset"]

logger = logging.getLogger(__name__)

WHITESPACE_REASON = "chosen and rejected differ only in whitespace"


@dataclass
class ExportSummary:
    out_dir: Path
    files: list[Path]
    datasheet: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.datasheet["counts"]["rows"])


def export_dataset(store: Store, out_dir: Path, options: ExportSettings) -> ExportSummary:
    """Aggregate the votes, balance, split and write every format, the datasheet and its chart."""
    _check_options(options)
    pairs = _voted_pairs(store)
    excluded: Counter[str] = Counter()
    rejected_rows: list[dict[str, str]] = []
    decisive, both_bad = _aggregate(pairs, options, excluded, rejected_rows)

    strata = _assign_strata(store, decisive + both_bad, options)
    before = distribution_report(decisive)
    rows, capped = cap_per_prompt(decisive, options.max_pairs_per_prompt, options.seed)
    rows, cluster_capped = cap_per_cluster(rows, options.max_rows_per_cluster, options.seed)
    both_bad, both_bad_capped = cap_per_prompt(both_bad, options.max_pairs_per_prompt, options.seed)
    for reason, count in (("per_prompt_cap", capped), ("per_cluster_cap", cluster_capped), ("both_bad_per_prompt_cap", both_bad_capped)):
        if count:
            excluded[reason] = count

    weights = balance_weights(
        rows, weighting=options.weighting, inverse_propensity=options.inverse_propensity, max_weight=options.max_weight
    )
    for row, weight in zip(rows, weights):
        row["weight"] = round(float(weight), 6)
    for row in both_bad:
        row["weight"] = 1.0
    balance = {
        "strata": strata,
        "before": before,
        "after_rows": distribution_report(rows),
        "after_weighted": distribution_report(rows, weights),
    }

    rows.sort(key=lambda row: (row["prompt_id"], row["pair_id"]))
    both_bad.sort(key=lambda row: (row["prompt_id"], row["pair_id"]))
    all_prompts = sorted({row["prompt_id"] for row in rows + both_bad})
    test_prompts = _test_prompts(all_prompts, options.test_fraction, options.seed)
    splits = {name: [row for row in rows if (row["prompt_id"] in test_prompts) == (name == "test")] for name in ("train", "test")}
    kto_splits = {
        name: [
            record
            for row in sorted(rows + both_bad, key=lambda row: (row["prompt_id"], row["pair_id"]))
            if (row["prompt_id"] in test_prompts) == (name == "test")
            for record in kto_records(row)
        ]
        for name in ("train", "test")
    }
    for name in ("train", "test"):
        check_preference_rows([standard_record(row) for row in splits[name]], source=f"export {name} split")
        check_preference_rows(kto_splits[name], source=f"export kto {name} split", kind="kto")

    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_formats(out_dir, splits, kto_splits)
    votes = [(vote["pair_id"], vote["annotator"], vote["outcome"]) for vote in store.votes()]
    datasheet = build_datasheet(
        pairs, rows, splits, kto_splits, excluded, options,
        agreement=agreement_report(votes), balance=balance, rejected_rows=rejected_rows,
    )
    files.append(out_dir / "cluster_shares.png")
    write_bytes_atomic(files[-1], cluster_chart_png(balance))
    files.append(out_dir / "datasheet.json")
    write_text_atomic(files[-1], json.dumps(datasheet, indent=2, ensure_ascii=False) + "\n")
    files.append(out_dir / "datasheet.md")
    write_text_atomic(files[-1], render_datasheet(datasheet))
    logger.info(
        "exported %d rows (%d train, %d test) and %d KTO rows to %s",
        len(rows), len(splits["train"]), len(splits["test"]), sum(len(v) for v in kto_splits.values()), out_dir,
    )
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
    if options.seed < 0:
        raise ConfigError(f"export seed must be 0 or more, got {options.seed}")
    if options.max_rows_per_cluster < 0:
        raise ConfigError(f"export max_rows_per_cluster must be 0 (no cap) or more, got {options.max_rows_per_cluster}")
    if options.prompt_clusters < 0:
        raise ConfigError(f"export prompt_clusters must be 0 (automatic) or more, got {options.prompt_clusters}")
    if not 0 < options.mode_distance <= 2:
        raise ConfigError(f"export mode_distance must be a cosine distance in (0, 2], got {options.mode_distance}")
    if not 0 < options.rare_mode_share < 1:
        raise ConfigError(f"export rare_mode_share must be in (0, 1), got {options.rare_mode_share}")
    if options.weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown export weighting {options.weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    if not options.max_weight >= 1:
        raise ConfigError(f"export max_weight must be at least 1 (weights have mean 1), got {options.max_weight}")


def _voted_pairs(store: Store) -> list[dict[str, Any]]:
    """Return one dict per pair with at least one vote, with texts, models, outcomes and propensity."""
    outcomes: dict[str, list[str]] = defaultdict(list)
    for vote in store.votes():
        outcomes[vote["pair_id"]].append(vote["outcome"])
    if not outcomes:
        return []
    pairs = store.pairs(outcomes)
    propensities = {row["pair_id"]: row["propensity"] for row in store.execute("SELECT pair_id, propensity FROM pairs")}
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
                "propensity": propensities.get(pair_id),
            }
        )
    return result


def _aggregate(
    pairs: list[dict[str, Any]],
    options: ExportSettings,
    excluded: Counter[str],
    rejected_rows: list[dict[str, str]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (decisive rows, both-bad rows); count every pair left out and why."""
    decisive, both_bad = [], []
    for pair in pairs:
        aggregate = aggregate_votes(pair["outcomes"], min_votes=options.min_votes, min_agreement=options.min_agreement)
        if aggregate.outcome is None:
            excluded[aggregate.reason or "no_majority"] += 1
            continue
        if aggregate.outcome == "tie":
            excluded["tie"] += 1
            continue
        chosen, rejected = (pair["b"], pair["a"]) if aggregate.outcome == "b" else (pair["a"], pair["b"])
        texts = preference_texts(pair["prompt"], chosen.text, rejected.text, chosen.metadata, rejected.metadata)
        if isinstance(texts, str):
            excluded["whitespace_only_difference" if texts == WHITESPACE_REASON else "invalid_shape"] += 1
            rejected_rows.append({"pair_id": pair["pair"].pair_id, "reason": texts})
            logger.warning("pair %s left out of the export: %s", pair["pair"].pair_id, texts)
            continue
        row = _row(pair, aggregate, chosen, rejected, texts)
        if aggregate.outcome == "both_bad":
            excluded["both_bad"] += 1
            both_bad.append(row)
        else:
            decisive.append(row)
    return decisive, both_bad


def _row(pair: dict[str, Any], aggregate: Aggregate, chosen, rejected, texts: PreferenceTexts) -> dict[str, Any]:
    return {
        "prompt": pair["prompt"],
        "chosen": texts.chosen,
        "rejected": texts.rejected,
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
        "propensity": pair["propensity"],
        "outcome": aggregate.outcome,
        "prompt_messages": texts.prompt_messages,
        "prompt_row": pair["pair"].prompt_row,
        "chosen_row": chosen.row,
        "rejected_row": rejected.row,
    }


def _assign_strata(store: Store, rows: list[dict[str, Any]], options: ExportSettings) -> dict[str, Any]:
    """Set prompt_cluster and the chosen / rejected modes on each row; return how they were found."""
    model, mode = store.get_meta("embedding_model"), store.get_meta("embedding_mode")
    prompt_rows = sorted({row["prompt_row"] for row in rows})

    clusters, cluster_method, k = _prompt_clusters(store, model, mode, prompt_rows, options)
    modes, mode_methods = response_modes(
        _responses_by_prompt(store, prompt_rows),
        mode_field=options.mode_field or None,
        rare_share=options.rare_mode_share,
        distance=options.mode_distance,
        vectors_for=_response_vector_loader(store, model, mode),
    )
    for row in rows:
        row["prompt_cluster"] = clusters.get(row["prompt_row"], 0)
        chosen_mode, rejected_mode = modes.get(row["chosen_row"]), modes.get(row["rejected_row"])
        row["chosen_mode"] = None if chosen_mode is None else chosen_mode.mode
        row["rejected_mode"] = None if rejected_mode is None else rejected_mode.mode
        row["chosen_mode_share"] = None if chosen_mode is None else chosen_mode.share
        row["chosen_rare_mode"] = None if chosen_mode is None else chosen_mode.rare
    return {
        "prompt_clusters": k,
        "prompt_cluster_method": cluster_method,
        "prompts_by_mode_method": dict(sorted(mode_methods.items())),
        "mode_field": options.mode_field,
        "rare_mode_share": options.rare_mode_share,
    }


def _prompt_clusters(
    store: Store, model: str | None, mode: str | None, prompt_rows: list[int], options: ExportSettings
) -> tuple[dict[int, int], str, int]:
    """Return (prompt row -> cluster, method, k); one cluster when prompts lack embeddings."""
    if not prompt_rows:
        return {}, "none", 0
    if model is None or mode is None:
        return {row: 0 for row in prompt_rows}, "none: the prompts have no embeddings", 1
    stored_rows, vectors = store.embedding_matrix("prompts", model, mode)
    position = {row: index for index, row in enumerate(stored_rows.tolist())}
    if any(row not in position for row in prompt_rows):
        logger.warning("some prompts have no stored embedding; the export puts every prompt in one cluster")
        return {row: 0 for row in prompt_rows}, "none: some prompt embeddings are missing", 1
    k = options.prompt_clusters or default_cluster_count(len(prompt_rows))
    labels = cluster_prompts(vectors[[position[row] for row in prompt_rows]], k, options.seed)
    return dict(zip(prompt_rows, labels.tolist())), "kmeans", int(labels.max()) + 1


def _responses_by_prompt(store: Store, prompt_rows: list[int]) -> dict[str, list[tuple[int, dict[str, Any], int]]]:
    """Map prompt_id -> [(response row, metadata, copies)] for every response of the given prompts."""
    copies = Counter(store.aliases().values())
    prompt_ids = {row: prompt_id for row, (prompt_id, _) in store.prompt_texts().items()}
    result: dict[str, list[tuple[int, dict[str, Any], int]]] = defaultdict(list)
    for start in range(0, len(prompt_rows), 900):
        chunk = prompt_rows[start : start + 900]
        marks = ",".join("?" * len(chunk))
        records = store.execute(
            f"SELECT id, prompt_row, metadata FROM responses WHERE prompt_row IN ({marks}) ORDER BY id", chunk
        )
        for record in records:
            result[prompt_ids[record["prompt_row"]]].append(
                (record["id"], json.loads(record["metadata"]), 1 + copies[record["id"]])
            )
    return result


def _response_vector_loader(store: Store, model: str | None, mode: str | None):
    """Return a function rows -> (R, D) stored embeddings (None if any is missing), loading on first use."""
    cache: dict[int, np.ndarray] = {}

    def vectors_for(rows: list[int]) -> np.ndarray | None:
        if model is None or mode is None:
            return None
        if not cache:
            # NOTE: loads every response embedding of the workspace once (R x D float32).
            stored_rows, vectors = store.embedding_matrix("responses", model, mode)
            cache.update(zip(stored_rows.tolist(), vectors))
        if any(row not in cache for row in rows):
            return None
        return np.stack([cache[row] for row in rows])

    return vectors_for


def _test_prompts(prompt_ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """Pick the test prompts: a seeded hash order, at least one when there are two or more prompts."""
    if test_fraction <= 0 or len(prompt_ids) < 2:
        return set()
    count = min(len(prompt_ids) - 1, max(1, round(test_fraction * len(prompt_ids))))
    ordered = sorted(prompt_ids, key=lambda prompt_id: seeded_key(seed, prompt_id))
    return set(ordered[:count])
