"""Balance an export so that common prompts and common answers do not dominate it.

Strata are prompt clusters (k-means over prompt embeddings) and response modes within a prompt
(the value of an answer field such as `answer_key` when every response of the prompt has one,
else average-linkage clusters of the prompt's response embeddings). Caps drop rows per prompt and
per cluster. Weights spread the total weight equally over clusters, then over the prompts of a
cluster, then over the chosen modes of a prompt. The rows of one mode share its weight in
proportion to 1 / propensity when the pairs were selected stochastically.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Weighting = Literal["balanced", "propensity", "none"]
WEIGHTINGS: tuple[str, ...] = ("balanced", "propensity", "none")
MAX_AUTO_CLUSTERS = 50
MISSING_MODE = "(no answer)"  # mode of the responses that lack the answer field on a prompt where others have it


def seeded_key(seed: int, value: str) -> str:
    """Return a hash that orders values reproducibly for one seed."""
    return hashlib.sha256(f"{seed}:{value}".encode("utf-8")).hexdigest()


# Prompt clusters


def default_cluster_count(n_prompts: int) -> int:
    """Return sqrt(n_prompts / 2) rounded, between 1 and 50 (a common rule of thumb for k)."""
    return max(1, min(MAX_AUTO_CLUSTERS, round(math.sqrt(n_prompts / 2))))


def cluster_prompts(vectors: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Return one k-means cluster label per prompt vector.

    vectors: (P, D) prompt embeddings. Returns (P,) int64 labels in [0, min(n_clusters, P)).
    Clusters are numbered by their first prompt, so the labels do not depend on k-means' own order.
    """
    n_prompts = len(vectors)
    k = min(n_clusters, n_prompts)
    if k <= 1:
        return np.zeros(n_prompts, dtype=np.int64)
    from sklearn.cluster import KMeans

    raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(vectors, dtype=np.float64))
    renumbered: dict[int, int] = {}
    for label in raw.tolist():
        renumbered.setdefault(label, len(renumbered))
    return np.array([renumbered[label] for label in raw.tolist()], dtype=np.int64)


# Response modes


@dataclass(frozen=True)
class ResponseMode:
    mode: str  # answer value or "cluster-<n>", unique within a prompt only
    share: float  # share of the prompt's responses (duplicates included) in this mode
    rare: bool  # share <= the rare-mode threshold


def modes_from_labels(
    labels: Sequence[str], counts: Sequence[int], rare_share: float
) -> list[ResponseMode]:
    """Return the mode of each response of one prompt from its label and how often it was produced."""
    totals: Counter[str] = Counter()
    for label, count in zip(labels, counts):
        totals[label] += count
    whole = sum(totals.values())
    return [
        ResponseMode(label, round(totals[label] / whole, 6), totals[label] / whole <= rare_share)
        for label in labels
    ]


def cluster_responses(vectors: np.ndarray, distance: float) -> list[str]:
    """Return a mode label per response: average-linkage clusters at a cosine distance threshold.

    vectors: (R, D) embeddings of one prompt's responses.
    """
    if len(vectors) < 2:
        return ["cluster-0"] * len(vectors)
    from sklearn.cluster import AgglomerativeClustering

    raw = AgglomerativeClustering(
        n_clusters=None, distance_threshold=distance, metric="cosine", linkage="average"
    ).fit_predict(np.asarray(vectors, dtype=np.float64))
    renumbered: dict[int, int] = {}
    for label in raw.tolist():
        renumbered.setdefault(label, len(renumbered))
    return [f"cluster-{renumbered[label]}" for label in raw.tolist()]


def _present(value: Any) -> bool:
    return value is not None and str(value) != ""


def response_modes(
    responses_by_prompt: dict[str, list[tuple[int, dict[str, Any], int]]],
    *,
    mode_field: str | None,
    rare_share: float,
    distance: float,
    vectors_for: Callable[[list[int]], np.ndarray | None],
) -> tuple[dict[int, ResponseMode], Counter[str]]:
    """Return the mode of every response row and how many prompts used each method.

    responses_by_prompt maps prompt_id -> [(response row, metadata, copies)], where copies counts
    the response and its byte-identical duplicates. `vectors_for(rows)` returns (R, D) embeddings
    in the order of `rows`, or None when some are missing. The methods are `field` (used when
    some response of the prompt has the field, and the others then share MISSING_MODE),
    `clusters`, and `none` (no field and no embeddings, so those responses get no entry).
    """
    modes: dict[int, ResponseMode] = {}
    methods: Counter[str] = Counter()
    for prompt_id in sorted(responses_by_prompt):
        entries = responses_by_prompt[prompt_id]
        rows = [row for row, _, _ in entries]
        counts = [copies for _, _, copies in entries]
        values = [metadata.get(mode_field) if mode_field else None for _, metadata, _ in entries]
        if any(_present(value) for value in values):
            labels, method = [str(value) if _present(value) else MISSING_MODE for value in values], "field"
        else:
            vectors = vectors_for(rows)
            if vectors is None:
                methods["none"] += 1
                continue
            labels, method = cluster_responses(vectors, distance), "clusters"
        methods[method] += 1
        for row, mode in zip(rows, modes_from_labels(labels, counts, rare_share)):
            modes[row] = mode
    return modes, methods


# Caps


def cap_per_prompt(rows: list[dict[str, Any]], cap: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """Keep at most `cap` rows per prompt, spread over the chosen modes, rarest mode first.

    Within one chosen mode, rows go by agreement, then votes, then a seeded order. The modes then
    take turns, so a prompt's kept rows cover as many chosen modes as the cap allows.
    """
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt_id"]].append(row)
    kept, dropped = [], 0
    for prompt_id in sorted(by_prompt):
        ordered = _mode_round_robin(by_prompt[prompt_id], seed)
        for rank, row in enumerate(ordered):
            row["_prompt_rank"] = rank
        kept.extend(ordered[:cap])
        dropped += max(0, len(ordered) - cap)
    return kept, dropped


def _mode_round_robin(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    by_mode: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_mode[str(row.get("chosen_mode"))].append(row)
    keyed = []
    for group in by_mode.values():
        group.sort(key=lambda row: (-row["agreement"], -row["n_votes"], seeded_key(seed, row["pair_id"])))
        for rank, row in enumerate(group):
            share = row.get("chosen_mode_share")
            keyed.append(((rank, 1.0 if share is None else share, seeded_key(seed, row["pair_id"])), row))
    keyed.sort(key=lambda item: item[0])
    return [row for _, row in keyed]


def cap_per_cluster(rows: list[dict[str, Any]], cap: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """Keep at most `cap` rows per prompt cluster (0: no cap), taking prompts in turn."""
    if cap <= 0:
        return rows, 0
    by_cluster: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_cluster[row["prompt_cluster"]].append(row)
    kept, dropped = [], 0
    for cluster in sorted(by_cluster):
        group = sorted(
            by_cluster[cluster],
            key=lambda row: (row.get("_prompt_rank", 0), seeded_key(seed, row["prompt_id"]), row["pair_id"]),
        )
        kept.extend(group[:cap])
        dropped += max(0, len(group) - cap)
    return kept, dropped


# Weights


def balance_weights(
    rows: list[dict[str, Any]], *, weighting: Weighting, inverse_propensity: bool, max_weight: float
) -> np.ndarray:
    """Return one weight per row, (N,) float64, mean 1, none above `max_weight`.

    `balanced`: equal total weight per prompt cluster, then per prompt within a cluster, then per
    chosen mode within a prompt. Within a mode, rows share in proportion to 1 / propensity when
    `inverse_propensity` is set and every row there has a propensity, and equally otherwise.
    `propensity`: 1 / propensity alone (rows without one get the mean). `none`: all 1.
    """
    n_rows = len(rows)
    if n_rows == 0 or weighting == "none":
        return np.ones(n_rows)
    if weighting == "propensity":
        raw = _propensity_weights(rows)
    else:
        raw = _hierarchical_weights(rows, inverse_propensity)
    return _clip_to_mean_one(raw, max_weight)


def _inverse(propensity: Any) -> float | None:
    # NOTE: the store records the probability of the draw that picked the pair, not the pair's
    # inclusion probability over the whole batch, so 1 / propensity is an approximate correction.
    if propensity is None or not math.isfinite(propensity) or propensity <= 0:
        return None
    return 1.0 / propensity


def _propensity_weights(rows: list[dict[str, Any]]) -> np.ndarray:
    inverses = [_inverse(row.get("propensity")) for row in rows]
    known = [value for value in inverses if value is not None]
    fill = float(np.mean(known)) if known else 1.0
    return np.array([fill if value is None else value for value in inverses], dtype=np.float64)


def _hierarchical_weights(rows: list[dict[str, Any]], inverse_propensity: bool) -> np.ndarray:
    tree: dict[int, dict[str, dict[str, list[int]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for position, row in enumerate(rows):
        tree[row["prompt_cluster"]][row["prompt_id"]][str(row.get("chosen_mode"))].append(position)

    weights = np.zeros(len(rows))
    for prompts in tree.values():
        cluster_total = 1.0 / len(tree)
        for modes in prompts.values():
            prompt_total = cluster_total / len(prompts)
            for positions in modes.values():
                mode_total = prompt_total / len(modes)
                inverses = [_inverse(rows[position].get("propensity")) for position in positions]
                if inverse_propensity and all(value is not None for value in inverses):
                    shares = np.array(inverses, dtype=np.float64)
                else:
                    shares = np.ones(len(positions))
                weights[positions] = mode_total * shares / shares.sum()
    return weights


def _clip_to_mean_one(raw: np.ndarray, max_weight: float, rounds: int = 50) -> np.ndarray:
    """Scale to mean 1, then clip at `max_weight` and rescale the rest until nothing exceeds it."""
    weights = raw * len(raw) / raw.sum()
    for _ in range(rounds):
        over = weights > max_weight
        if not over.any():
            break
        room = len(weights) - max_weight * over.sum()
        if room <= 0:  # every row would need the cap, so equal weights are the only mean-1 solution
            return np.ones(len(weights))
        weights[over] = max_weight
        weights[~over] *= room / weights[~over].sum()
    return weights


# Reports


def distribution_report(rows: list[dict[str, Any]], weights: np.ndarray | None = None) -> dict[str, Any]:
    """Summarise rows (weighted when `weights` is given): position, length, models, rare modes, clusters."""
    if weights is None:
        weights = np.ones(len(rows))
    total = float(weights.sum())

    def rate(flags: list[bool], mask: list[bool] | None = None) -> float | None:
        selected = [(flag, weight) for flag, weight, keep in zip(flags, weights, mask or [True] * len(flags)) if keep]
        whole = sum(weight for _, weight in selected)
        return round(sum(weight for flag, weight in selected if flag) / whole, 6) if whole > 0 else None

    known_mode = [row.get("chosen_rare_mode") is not None for row in rows]
    models: Counter[str] = Counter()
    clusters: Counter[int] = Counter()
    for row, weight in zip(rows, weights):
        models[row["chosen_model"] or "unknown"] += float(weight)
        clusters[row["prompt_cluster"]] += float(weight)
    return {
        "rows": len(rows),
        "total_weight": round(total, 6),
        "chosen_shown_left_rate": rate([bool(row["chosen_shown_left"]) for row in rows]),
        "chosen_longer_rate": rate([len(row["chosen"]) > len(row["rejected"]) for row in rows]),
        "rare_mode_share": rate([bool(row.get("chosen_rare_mode")) for row in rows], known_mode),
        "rows_with_known_mode": sum(known_mode),
        "chosen_model_shares": _shares(models, total),
        "cluster_shares": {str(key): value for key, value in sorted(_shares(clusters, total).items())},
    }


def _shares(counter: Counter, total: float) -> dict:
    if total <= 0:
        return {}
    ordered = sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))
    return {key: round(value / total, 6) for key, value in ordered}
