"""Agreement statistics, strata, caps, weights and byte-identical output of the export."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from engine.export import export_dataset
from engine.export_balance import (
    MISSING_MODE,
    balance_weights,
    cap_per_cluster,
    cap_per_prompt,
    cluster_prompts,
    distribution_report,
    response_modes,
)
from engine.export_votes import agreement_report, krippendorff_alpha_nominal
from engine.store import Store
from engine.workspace import ExportSettings
from test_export import populate


def test_alpha_krippendorff_example():
    # Nominal example of Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011): alpha 0.743.
    observers = [
        "1 2 3 3 2 1 4 1 2 . . .",
        "1 2 3 3 2 2 4 1 2 5 . 3",
        ". 3 3 3 2 3 4 2 2 5 1 .",
        "1 2 3 3 2 4 4 1 2 5 1 .",
    ]
    units = [[value for value in column if value != "."] for column in zip(*(line.split() for line in observers))]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_perfect_agreement():
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b", "b"]]) == 1.0


def test_alpha_undefined_single_value():
    assert krippendorff_alpha_nominal([["a", "a"], ["a"]]) is None


def test_agreement_report_annotators():
    votes = [
        ("p1", "ann", "a"), ("p1", "bob", "a"), ("p1", "cat", "b"),
        ("p2", "ann", "tie"), ("p2", "bob", "tie"), ("p2", "cat", "skip"),
        ("p3", "ann", "a"),  # one vote: not counted
    ]
    report = agreement_report(votes)
    assert report["pairs_with_two_or_more_votes"] == 2
    assert report["annotators_vs_majority"]["cat"] == {"votes": 1, "agree": 0, "rate": 0.0}
    assert report["annotators_vs_majority"]["ann"]["rate"] == 1.0


def test_cluster_prompts_seeded():
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(0, 0.05, (10, 4)) + offset for offset in (0, 5, 10)])
    labels = cluster_prompts(vectors, 3, seed=1)
    assert labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert labels.tolist() == cluster_prompts(vectors, 3, seed=1).tolist()


def test_modes_from_field_and_missing():
    responses = {"p": [(1, {"answer_key": "4"}, 1), (2, {"answer_key": "4"}, 2), (3, {"answer_key": "5"}, 1), (4, {}, 1)]}
    modes, methods = response_modes(responses, mode_field="answer_key", rare_share=0.25, distance=0.2, vectors_for=lambda rows: None)
    assert modes[2].share == 0.6  # 3 of 5 copies
    assert modes[3].rare
    assert modes[4].mode == MISSING_MODE
    assert methods == {"field": 1}


def test_modes_from_clusters():
    vectors = np.array([[1.0, 0.0], [0.99, 0.05], [0.98, 0.1], [0.0, 1.0]])
    responses = {"p": [(row, {}, 1) for row in range(4)]}
    modes, methods = response_modes(responses, mode_field="answer_key", rare_share=0.25, distance=0.2, vectors_for=lambda rows: vectors[rows])
    assert [modes[row].mode for row in range(4)] == ["cluster-0", "cluster-0", "cluster-0", "cluster-1"]
    assert modes[3].rare
    assert methods == {"clusters": 1}


def make_rows(spec: list[tuple[str, int, str, float | None]]) -> list[dict]:
    """Rows from (prompt_id, prompt_cluster, chosen_mode, propensity)."""
    return [
        {
            "prompt_id": prompt_id, "prompt_cluster": cluster, "chosen_mode": mode, "propensity": propensity,
            "pair_id": f"pair-{index}", "agreement": 1.0, "n_votes": 3, "chosen_mode_share": 0.5,
        }
        for index, (prompt_id, cluster, mode, propensity) in enumerate(spec)
    ]


def test_weights_equal_per_cluster():
    rows = make_rows([("p1", 0, "x", None)] * 6 + [("p2", 1, "x", None)] * 2)
    weights = balance_weights(rows, weighting="balanced", inverse_propensity=True, max_weight=10)
    assert weights[:6].sum() == pytest.approx(weights[6:].sum())
    assert weights.mean() == pytest.approx(1.0)


def test_weights_equal_per_mode():
    rows = make_rows([("p1", 0, "common", None)] * 3 + [("p1", 0, "rare", None)])
    weights = balance_weights(rows, weighting="balanced", inverse_propensity=True, max_weight=10)
    assert weights[3] == pytest.approx(weights[:3].sum())


def test_weights_inverse_propensity_within_mode():
    rows = make_rows([("p1", 0, "x", 0.1), ("p1", 0, "x", 0.4)])
    weights = balance_weights(rows, weighting="balanced", inverse_propensity=True, max_weight=10)
    assert weights[0] / weights[1] == pytest.approx(4.0)


def test_weights_propensity_only():
    rows = make_rows([("p1", 0, "x", 0.5), ("p2", 1, "y", 0.25), ("p3", 1, "y", None)])
    weights = balance_weights(rows, weighting="propensity", inverse_propensity=True, max_weight=10)
    assert weights.tolist() == pytest.approx([2 / 3, 4 / 3, 1.0])


def test_weights_clipped():
    rows = make_rows([("p1", 0, "x", None)] * 50 + [("p2", 1, "x", None)])
    weights = balance_weights(rows, weighting="balanced", inverse_propensity=True, max_weight=5)
    assert weights.max() == pytest.approx(5.0)
    assert weights.mean() == pytest.approx(1.0)


def test_weights_none():
    rows = make_rows([("p1", 0, "x", 0.1), ("p2", 1, "y", 0.9)])
    assert balance_weights(rows, weighting="none", inverse_propensity=True, max_weight=10).tolist() == [1.0, 1.0]


def test_cap_prompt_prefers_mode_variety():
    rows = make_rows([("p1", 0, "common", None)] * 3 + [("p1", 0, "rare", None)])
    rows[3]["chosen_mode_share"] = 0.1
    kept, dropped = cap_per_prompt(rows, 2, seed=0)
    assert sorted(row["chosen_mode"] for row in kept) == ["common", "rare"]
    assert dropped == 2


def test_cap_cluster_takes_prompts_in_turn():
    rows = make_rows([("p1", 0, "x", None)] * 3 + [("p2", 0, "x", None)] * 3)
    ranked, _ = cap_per_prompt(rows, 3, seed=0)
    kept, dropped = cap_per_cluster(ranked, 2, seed=0)
    assert sorted(row["prompt_id"] for row in kept) == ["p1", "p2"]
    assert dropped == 4


def test_report_weighted_rare_share():
    rows = [
        {"chosen": "aa", "rejected": "b", "chosen_shown_left": True, "chosen_model": "m", "prompt_cluster": 0, "chosen_rare_mode": True},
        {"chosen": "a", "rejected": "bb", "chosen_shown_left": False, "chosen_model": "m", "prompt_cluster": 0, "chosen_rare_mode": False},
    ]
    report = distribution_report(rows, np.array([3.0, 1.0]))
    assert report["rare_mode_share"] == 0.75
    assert report["chosen_longer_rate"] == 0.75


def tree_digest(root: Path) -> dict[str, str]:
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_export_every_file_deterministic(tmp_path):
    with Store(tmp_path / "store.sqlite3") as store:
        populate(store, prompts=6)
        export_dataset(store, tmp_path / "one", ExportSettings(test_fraction=0.3))
        export_dataset(store, tmp_path / "two", ExportSettings(test_fraction=0.3))
        export_dataset(store, tmp_path / "two", ExportSettings(test_fraction=0.3))  # over an earlier export
    one, two = tree_digest(tmp_path / "one"), tree_digest(tmp_path / "two")
    assert len(one) == 15 + 3 * 7  # 12 data files, datasheet, chart; 3 datasets folders of 2 splits
    assert one == two


def test_export_rejects_unknown_weighting(tmp_path):
    from engine.errors import ConfigError

    with Store(tmp_path / "store.sqlite3") as store, pytest.raises(ConfigError, match="unknown export weighting 'square'"):
        export_dataset(store, tmp_path / "out", ExportSettings(weighting="square"))
