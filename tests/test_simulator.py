"""Tests of the offline simulator: oracles, metrics, the round loop, summary.json and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import ConfigError, InputError
from engine.simulator import SimulationData, SimulationSettings, fit_on_votes, simulate, split_seed
from engine.simulator_corpus import read_corpus
from engine.simulator_oracles import CorrectnessOracle, RecordedVotesOracle, SyntheticOracle, parse_oracle
from engine.simulator_report import interval, labels_to_target, summarise
from engine.simulator_setup import SimulationInput, build_simulation, generator_features

DIM = 12


def make_data(seed: int = 0, n_prompts: int = 10, per_prompt: int = 6, correct: bool = False) -> SimulationData:
    rng = np.random.default_rng(seed)
    response_prompt = np.repeat(np.arange(n_prompts), per_prompt)
    embeddings = rng.normal(size=(response_prompt.size, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    first, second = [], []
    for prompt in range(n_prompts):
        members = np.flatnonzero(response_prompt == prompt)
        i, j = np.triu_indices(members.size, k=1)
        first.extend(members[i])
        second.extend(members[j])
    return SimulationData(
        embeddings=embeddings,
        response_prompt=response_prompt,
        pair_a=np.array(first, dtype=np.int64),
        pair_b=np.array(second, dtype=np.int64),
        modes=rng.integers(0, 3, response_prompt.size),
        correct=(rng.random(response_prompt.size) < 0.3) if correct else None,
    )


def synthetic(data: SimulationData) -> SyntheticOracle:
    return SyntheticOracle.build(data.embeddings, data.pair_a, data.pair_b, seed=1)


def test_synthetic_oracle_reward_spread() -> None:
    data = make_data()
    oracle = SyntheticOracle.build(data.embeddings, data.pair_a, data.pair_b, seed=1, sharpness=2.0)
    differences = oracle.rewards[data.pair_a] - oracle.rewards[data.pair_b]
    assert np.std(differences) == pytest.approx(2.0)


def test_synthetic_oracle_votes_follow_preference() -> None:
    data = make_data()
    oracle = synthetic(data)
    pairs = np.repeat(np.arange(5), 4000)
    votes = oracle.vote(data.pair_a[pairs], data.pair_b[pairs], np.random.default_rng(0))
    share = (votes.reshape(5, 4000) == "a").mean(axis=1)
    np.testing.assert_allclose(share, oracle.preference(data.pair_a[:5], data.pair_b[:5]), atol=0.03)


def test_correctness_oracle_outcomes() -> None:
    oracle = CorrectnessOracle(correct=np.array([True, False, True, False]))
    votes = oracle.vote(np.array([0, 1, 0, 1]), np.array([1, 0, 2, 3]), np.random.default_rng(0))
    assert votes.tolist() == ["a", "b", "tie", "both_bad"]


def test_correctness_oracle_preference() -> None:
    oracle = CorrectnessOracle(correct=np.array([True, False, True]))
    assert oracle.preference(np.array([0, 1, 0]), np.array([1, 0, 2])).tolist() == [1.0, 0.0, 0.5]


def test_votes_oracle_reads_file(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.jsonl"
    rows = [{"prompt_id": "p", "prompt": "Qu'est-ce ? 🎉", "response_id": f"r{i}", "response": f"réponse {i}"} for i in range(3)]
    outputs.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    votes = tmp_path / "votes.jsonl"
    votes.write_text(
        json.dumps({"response_a_id": "r0", "response_b_id": "r1", "votes": ["a", "a", "tie"]}) + "\n"
        + json.dumps({"response_a_id": "r2", "response_b_id": "r0", "winner": "b"}) + "\n"
        + json.dumps({"response_a_id": "r9", "response_b_id": "r0", "winner": "a"}) + "\n",
        encoding="utf-8",
    )
    oracle = RecordedVotesOracle.from_file(votes, read_corpus(outputs))
    assert oracle.pair_a.size == 2
    assert oracle.preference(np.array([0, 0]), np.array([1, 2])).tolist() == [1.0, 1.0]
    assert set(oracle.vote(np.repeat(0, 50), np.repeat(1, 50), np.random.default_rng(0))) == {"a", "tie"}


def test_parse_oracle_rejects_unknown() -> None:
    with pytest.raises(InputError, match="bt-synthetic"):
        parse_oracle("majority")


def test_split_keeps_heldout_out_of_pool() -> None:
    data = make_data()
    oracle = synthetic(data)
    split = split_seed(data, oracle, 0, SimulationSettings(strategies=["random"], budget=2, rounds=1, seeds=1))
    pool_prompts = set(data.response_prompt[data.pair_a[split.pool_pairs]].tolist())
    heldout_prompts = set(data.response_prompt[data.pair_a[split.heldout_pairs]].tolist())
    assert heldout_prompts
    assert not pool_prompts & heldout_prompts


@pytest.mark.parametrize("strategy", ["hybrid", "random", "uncertainty", "novelty", "stochastic"])
def test_simulate_rows_per_round(strategy: str) -> None:
    data = make_data()
    settings = SimulationSettings(strategies=[strategy], budget=4, rounds=3, seeds=2, n_members=2)
    rows, references = simulate(data, synthetic(data), settings)
    assert len(rows) == 6
    assert [row["labels"] for row in rows[:3]] == [4, 8, 12]
    assert len(references) == 2
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows)


def test_simulate_same_seed_same_rows() -> None:
    data = make_data()
    settings = SimulationSettings(strategies=["hybrid"], budget=3, rounds=2, seeds=1, n_members=2)
    first, _ = simulate(data, synthetic(data), settings)
    second, _ = simulate(data, synthetic(data), settings)
    skipped = {"selection_seconds", "rare_correct_recall"}  # timing differs, and NaN != NaN
    for row, again in zip(first, second):
        assert {k: v for k, v in row.items() if k not in skipped} == {k: v for k, v in again.items() if k not in skipped}


def test_simulate_stops_when_pool_exhausted() -> None:
    data = make_data(n_prompts=3, per_prompt=3)
    settings = SimulationSettings(strategies=["random"], budget=50, rounds=4, seeds=1, n_members=2)
    rows, _ = simulate(data, synthetic(data), settings)
    assert len(rows) == 1


def test_simulate_rare_correct_recall_in_range() -> None:
    data = make_data(correct=True, n_prompts=12)
    oracle = CorrectnessOracle(correct=data.correct)
    settings = SimulationSettings(strategies=["random"], budget=10, rounds=2, seeds=1, n_members=2)
    rows, _ = simulate(data, oracle, settings)
    recall = rows[-1]["rare_correct_recall"]
    assert 0.0 <= recall <= 1.0


def test_simulate_all_ties_has_no_decisive_labels() -> None:
    data = make_data()
    oracle = CorrectnessOracle(correct=np.ones(data.embeddings.shape[0], dtype=bool))
    settings = SimulationSettings(strategies=["hybrid"], budget=5, rounds=2, seeds=1, n_members=2)
    rows, references = simulate(data, oracle, settings)
    assert rows[-1]["decisive_labels"] == 0
    assert np.isnan(rows[-1]["accuracy"])
    assert references[0]["reference_accuracy"] is None


def test_settings_reject_unknown_strategy() -> None:
    with pytest.raises(Exception, match="expected one of"):
        SimulationSettings(strategies=["greedy"], budget=1, rounds=1, seeds=1)


def test_settings_reject_zero_budget() -> None:
    with pytest.raises(ConfigError, match="budget"):
        SimulationSettings(strategies=["random"], budget=0, rounds=1, seeds=1)


def test_interval_single_value() -> None:
    assert interval([0.5]) == {"mean": 0.5, "ci95": [None, None], "n": 1}


def test_cli_rejects_repeated_strategy(tmp_path, capsys) -> None:
    from engine.cli import main

    outputs = Path(__file__).resolve().parents[1] / "examples" / "outputs.jsonl"
    arguments = ["simulate", "--outputs", str(outputs), "--oracle", "correctness", "--out", str(tmp_path / "out"), "--budget", "2", "--rounds", "1"]
    assert main([*arguments, "--strategies", "hybrid,hybrid"]) == 1
    assert "more than once" in capsys.readouterr().err
    assert main([*arguments, "--strategies", "random", "--option", "bogus=1"]) == 1
    assert "taken by none of the strategies" in capsys.readouterr().err


def test_labels_to_target_first_round_reaching() -> None:
    rows = [
        {"seed": 0, "round": 1, "labels": 10, "accuracy": 0.5},
        {"seed": 0, "round": 2, "labels": 20, "accuracy": 0.96},
        {"seed": 1, "round": 1, "labels": 10, "accuracy": 0.5},
    ]
    assert labels_to_target(rows, {0: 1.0, 1: 1.0}) == [20.0, None]


def test_summary_schema() -> None:
    data = make_data()
    settings = SimulationSettings(strategies=["hybrid", "random"], budget=5, rounds=2, seeds=2, n_members=2)
    rows, references = simulate(data, synthetic(data), settings)
    summary = summarise(rows, references)
    entry = summary["strategies"]["hybrid"]
    assert set(summary) == {"strategies"}
    assert set(entry["labels_to_target"]) >= {"mean", "ci95"}
    assert "mean" in entry["final_accuracy"]
    assert len(entry["heldout_loglik"]) == 2


def test_generator_features_one_hot() -> None:
    embeddings = np.eye(3, 4, dtype=np.float32)
    features = generator_features(embeddings, ["m1", None, "m2"])
    assert features.shape == (3, 6)
    assert features[1, 4:].sum() == 0.0


def test_mode_field_rejects_oracle_field(tmp_path: Path) -> None:
    spec = SimulationInput(outputs=tmp_path / "x.jsonl", oracle="correctness", embedding_cache=tmp_path / "c.npz", mode_field="correct")
    with pytest.raises(ConfigError, match="oracle field"):
        build_simulation(spec)


def test_cli_simulate_writes_files(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.jsonl"
    lines = []
    for prompt in range(6):
        for index in range(4):
            lines.append(json.dumps({
                "prompt_id": f"p{prompt}", "prompt": f"Combien font {prompt} + {index} ?",
                "response_id": f"p{prompt}-{index}", "model": f"m{index}",
                "response": f"La réponse est {prompt + min(index, 2)} ✓", "answer_key": str(prompt + min(index, 2)),
                "correct": index == 0,
            }, ensure_ascii=False))
    outputs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sim"
    status = main([
        "simulate", "--outputs", str(outputs), "--oracle", "correctness", "--strategies", "hybrid,random",
        "--budget", "3", "--rounds", "2", "--seeds", "2", "--members", "2", "--mode-field", "answer_key",
        "--generator-feature", "--heldout-fraction", "0.34", "--out", str(out),
    ])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert status == 0
    assert (out / "learning_curves.png").stat().st_size > 0
    assert (out / "rounds.csv").read_text(encoding="utf-8").count("\n") == 1 + 2 * 2 * 2
    assert "rare_correct_recall" in summary["strategies"]["hybrid"]


def test_model_recovers_synthetic_oracle_rewards() -> None:
    data = make_data(seed=5, n_prompts=40, per_prompt=8)
    oracle = synthetic(data)
    rng = np.random.default_rng(0)
    pairs = np.repeat(np.arange(data.pair_a.size), 10)
    outcomes = oracle.vote(data.pair_a[pairs], data.pair_b[pairs], rng)
    model = fit_on_votes(data, pairs, outcomes, seed=0, n_members=2, l2=1.0)
    learned = model.rewards(data.embeddings)
    ranks = [np.argsort(np.argsort(values)) for values in (learned, oracle.rewards)]
    assert np.corrcoef(ranks[0], ranks[1])[0, 1] >= 0.9
