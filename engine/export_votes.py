"""Vote aggregation and inter-annotator agreement for the export.

Policy for one pair, over its non-skip votes:

- A strict majority for `a` or `b` (more than half of the votes, and at least `min_agreement` of
  them) makes a preference row: the majority's response is chosen, the other rejected.
- A majority for `tie` makes no row in any format, because a tie means the two responses are
  equally good or equally bad, and it does not tell which.
- A majority for `both_bad` makes no preference row (chosen would not be better than rejected).
  The KTO form gets both responses as undesirable examples.
- No strict majority (for example one `a` and one `b`), fewer than `min_votes` votes, or an
  agreement below `min_agreement` leaves the pair out, and the datasheet counts the reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

VOTE_CATEGORIES = ("a", "b", "tie", "both_bad")  # the non-skip outcomes


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


def krippendorff_alpha_nominal(units: Iterable[Sequence[str]]) -> float | None:
    """Return Krippendorff's alpha for nominal values, or None when it is undefined.

    Each unit is the list of values that the annotators gave one item (any number of annotators).
    Units with fewer than two values carry no pairable information and are ignored. Alpha is
    1 - (n - 1) * D / E, where D sums the disagreeing ordered value pairs within units (each unit
    weighted by 1 / (m_u - 1)) and E sums n_c * n_k over all distinct values c != k. It is None
    when fewer than two values are pairable or when every value is the same (E = 0).
    """
    observed = 0.0
    totals: Counter[str] = Counter()
    for unit in units:
        if len(unit) < 2:
            continue
        counts = Counter(unit)
        m = len(unit)
        observed += (m * m - sum(count * count for count in counts.values())) / (m - 1)
        totals.update(counts)

    n = sum(totals.values())
    expected = n * n - sum(count * count for count in totals.values())
    if n < 2 or expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def agreement_report(votes: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """Summarise agreement over `(pair_id, annotator, outcome)` votes; skips are left out.

    Only pairs with two or more non-skip votes count. Each annotator's agreement is the share of
    their votes equal to the pair's strict-majority outcome (their own vote included), over pairs
    that have such a majority.
    """
    by_pair: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pair_id, annotator, outcome in votes:
        if outcome != "skip":
            by_pair[pair_id].append((annotator, outcome))
    multi = {pair_id: entries for pair_id, entries in by_pair.items() if len(entries) >= 2}

    alpha = krippendorff_alpha_nominal([outcome for _, outcome in entries] for entries in multi.values())
    per_annotator: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # annotator -> [votes, agreeing]
    for entries in multi.values():
        majority = aggregate_votes([outcome for _, outcome in entries]).outcome
        if majority is None:
            continue
        for annotator, outcome in entries:
            per_annotator[annotator][0] += 1
            per_annotator[annotator][1] += int(outcome == majority)

    annotators = {
        annotator: {"votes": counted, "agree": agreeing, "rate": round(agreeing / counted, 6)}
        for annotator, (counted, agreeing) in sorted(per_annotator.items())
    }
    return {
        "pairs_with_two_or_more_votes": len(multi),
        "krippendorff_alpha_nominal": None if alpha is None else round(alpha, 6),
        "annotators_vs_majority": annotators,
    }
