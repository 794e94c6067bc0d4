"""Policy-likelihood novelty in `prefscout round` and `prefscout simulate`, and the settings a round records.

The policy is a tiny randomly initialised GPT-2 with a byte-level BPE tokenizer trained in memory,
saved to a folder with `save_pretrained` and loaded back through `load_policy`, so nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import acquisition.policy
import engine.rounds
import engine.simulator
from acquisition.policy import load_policy, mean_token_logprob, policy_cache_key
from engine.cli import main
from engine.errors import ConfigError
from engine.rounds import load_corpus, run_round
from engine.simulator_corpus import read_corpus
from engine.simulator_setup import SimulationInput, build_simulation
from engine.status import format_status, workspace_status
from engine.store import Store, utc_now
from engine.workspace import RoundSettings, Workspace
from test_rounds import (  # noqa: F401  (recorder and workspace are pytest fixtures)
    SelectionRecorder,
    output_rows,
    recorder,
    workspace,
)

EXAMPLE_OUTPUTS = Path(__file__).resolve().parent.parent / "examples" / "outputs.jsonl"
RESPONSES_PER_PROMPT = 4


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory on the test outputs, so every text has tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([row["prompt"] + "\n" + row["response"] for row in output_rows()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")


def save_tiny_gpt2(folder: Path, tokenizer: PreTrainedTokenizerFast, *, n_positions: int = 256) -> Path:
    """Save a tiny random GPT-2 with `n_positions` positions and `tokenizer` to `folder`; return it."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder containing a tiny random GPT-2 (256 positions) and its tokenizer, as `save_pretrained` writes them."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("policy") / "tiny-gpt2", byte_level_tokenizer())


def count_rows(workspace: Workspace, table: str) -> int:
    with Store(workspace.store_path) as store:
        return store.count(f"SELECT COUNT(*) FROM {table}")


def round_options(workspace: Workspace) -> dict:
    with Store(workspace.store_path) as store:
        return json.loads(store.execute("SELECT options FROM rounds ORDER BY id DESC LIMIT 1").fetchone()["options"])


def fail_if_loaded(name: str, *, device: str | None = None):
    raise AssertionError(f"load_policy_model({name!r}) was called, but every log-probability should be cached")


def test_round_pool_gets_policy_logprob(workspace: Workspace, policy_folder: Path, recorder: SelectionRecorder) -> None:
    settings = RoundSettings(policy_model=str(policy_folder))
    with Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=4, seed=0, settings=settings)
        corpus = load_corpus(workspace, store)
        texts = {response.row: response.text for response in store.responses()}
        prompts = {row: text for row, (_, text) in store.prompt_texts().items()}
    model, tokenizer = load_policy(str(policy_folder))
    expected = mean_token_logprob(
        model,
        tokenizer,
        [prompts[int(row)] for row in corpus.prompt_rows],
        [texts[int(row)] for row in corpus.rows],
        batch_size=1,
    )
    pool = recorder.calls[0]["pool"]
    assert report.policy_computed == len(output_rows())
    assert report.policy_cached == 0
    assert pool.policy_logprob is not None
    np.testing.assert_allclose(pool.policy_logprob, expected, atol=1e-5)


def test_second_round_reads_cache(
    workspace: Workspace, policy_folder: Path, monkeypatch: pytest.MonkeyPatch, recorder: SelectionRecorder
) -> None:
    settings = RoundSettings(policy_model=str(policy_folder))
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=settings)
        monkeypatch.setattr(engine.rounds, "load_policy_model", fail_if_loaded)
        second = run_round(workspace, store, budget=4, seed=1, settings=settings)
    assert second.round_id == 2
    assert second.policy_computed == 0
    assert second.policy_cached == len(output_rows())
    np.testing.assert_array_equal(recorder.calls[0]["pool"].policy_logprob, recorder.calls[1]["pool"].policy_logprob)


def test_cache_keyed_by_max_length(workspace: Workspace, policy_folder: Path) -> None:
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(policy_model=str(policy_folder)))
        shorter = RoundSettings(policy_model=str(policy_folder), policy_max_length=16)
        report = run_round(workspace, store, budget=4, seed=1, settings=shorter)
    assert report.policy_computed == len(output_rows())
    assert count_rows(workspace, "policy_logprobs") == 2 * len(output_rows())


def test_round_scores_only_prompts_with_candidates(
    workspace: Workspace, policy_folder: Path, recorder: SelectionRecorder, tmp_path: Path
) -> None:
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps({"response_a_id": "p0-r0", "response_b_id": "p0-r2"}) + "\n", encoding="utf-8")
    settings = RoundSettings(policy_model=str(policy_folder))
    with Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=1, seed=0, candidates=candidates, settings=settings)
    pool = recorder.calls[0]["pool"]
    scored = pool.response_prompt == pool.response_prompt[pool.pair_a[0]]
    assert report.policy_computed == RESPONSES_PER_PROMPT
    assert np.all(pool.policy_logprob[scored] < 0.0)
    assert np.all(pool.policy_logprob[~scored] == 0.0)


def test_store_without_policy_table(workspace: Workspace, policy_folder: Path) -> None:
    with Store(workspace.store_path) as store:
        store.execute("DROP TABLE policy_logprobs")
    with Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(policy_model=str(policy_folder)))
    assert report.round_id == 1
    assert count_rows(workspace, "policy_logprobs") == len(output_rows())


def test_missing_policy_records_nothing(workspace: Workspace, tmp_path: Path) -> None:
    settings = RoundSettings(policy_model=str(tmp_path / "no-such-model"))
    with Store(workspace.store_path) as store:
        with pytest.raises(ConfigError, match="policy model folder .* not found"):
            run_round(workspace, store, budget=4, seed=0, settings=settings)
    assert count_rows(workspace, "rounds") == 0
    assert count_rows(workspace, "pairs") == 0
    assert count_rows(workspace, "policy_logprobs") == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy_model": " "}, "--policy-model"),
        ({"policy_batch_size": 0}, "--policy-batch-size"),
        ({"policy_max_length": 1}, "--policy-max-length"),
    ],
)
def test_policy_settings_rejected(workspace: Workspace, policy_folder: Path, overrides: dict, message: str) -> None:
    settings = RoundSettings(**{"policy_model": str(policy_folder), **overrides})
    with Store(workspace.store_path) as store:
        with pytest.raises(ConfigError, match=message):
            run_round(workspace, store, budget=4, seed=0, settings=settings)
    assert count_rows(workspace, "rounds") == 0


def test_cli_round_reports_cache_counts(
    workspace: Workspace, policy_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["round", "--workspace", str(workspace.root), "--budget", "2", "--seed", "0", "--no-push",
                 "--policy-model", str(policy_folder), "--policy-batch-size", "3"]
    first = main(arguments)
    first_output = capsys.readouterr().out
    second = main(arguments[:6] + ["1"] + arguments[7:])
    second_output = capsys.readouterr().out
    assert first == 0
    assert second == 0
    assert f"{len(output_rows())} computed, 0 read from the workspace cache" in first_output
    assert f"0 computed, {len(output_rows())} read from the workspace cache" in second_output


def test_cli_missing_policy_fails(workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-model"
    status = main(["round", "--workspace", str(workspace.root), "--budget", "2", "--no-push", "--policy-model", str(missing)])
    error = capsys.readouterr().err
    assert status == 1
    assert f"policy model folder {str(missing)!r} not found" in error
    assert count_rows(workspace, "rounds") == 0


def test_config_policy_model_used(workspace: Workspace, policy_folder: Path, recorder: SelectionRecorder) -> None:
    config = workspace.load_config()
    config.round.policy_model = str(policy_folder)
    workspace.save_config(config)
    assert main(["round", "--workspace", str(workspace.root), "--budget", "2", "--seed", "0", "--no-push"]) == 0
    assert recorder.calls[0]["pool"].policy_logprob is not None
    assert round_options(workspace)["policy_model"] == policy_cache_key(str(policy_folder))


def test_round_options_hold_settings(workspace: Workspace, policy_folder: Path) -> None:
    settings = RoundSettings(
        mode_field="answer_key", generator_feature=True, novelty_weight=0.8, optimism=False, policy_model=str(policy_folder)
    )
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=settings)
    options = round_options(workspace)
    assert options["mode_field"] == "answer_key"
    assert options["mode_threshold"] is None
    assert options["generator_feature"] is True
    assert options["novelty_weight"] == 0.8
    assert options["optimism"] is False
    assert options["policy_model"] == policy_cache_key(str(policy_folder))
    assert options["policy_max_length"] == 256  # the default 1024, capped at the model's positions
    assert options["max_per_prompt"] == 2


def test_random_round_options_mark_unused(workspace: Workspace) -> None:
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, strategy="random", settings=RoundSettings())
    options = round_options(workspace)
    assert options["novelty_weight"] is None
    assert options["optimism"] is None
    assert options["policy_model"] is None
    assert options["mode_field"] is None
    assert options["mode_threshold"] == RoundSettings().mode_threshold


def test_status_shows_last_round(workspace: Workspace, policy_folder: Path) -> None:
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=RoundSettings())
        run_round(workspace, store, budget=4, seed=1, settings=RoundSettings(policy_model=str(policy_folder)))
        status = workspace_status(workspace, store)
    lines = format_status(status)
    assert status["last_round"]["id"] == 2
    assert status["last_round"]["seed"] == 1
    assert status["last_round"]["options"]["policy_model"] == policy_cache_key(str(policy_folder))
    assert any(f"policy model {policy_cache_key(str(policy_folder))}" in line for line in lines)


def test_status_reads_old_round_options(workspace: Workspace) -> None:
    with Store(workspace.store_path) as store:
        store.execute(
            "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
            "VALUES ('hybrid', 4, 7, 36, 0, ?, ?)",
            (json.dumps({"max_per_prompt": 2, "novelty_weight": 0.5, "optimism": True}), utc_now()),
        )
        status = workspace_status(workspace, store)
    lines = format_status(status)
    assert status["last_round"]["options"] == {"max_per_prompt": 2, "novelty_weight": 0.5, "optimism": True}
    assert any("last: round 1, hybrid, budget 4, seed 7)" in line for line in lines)


def test_status_without_rounds(workspace: Workspace) -> None:
    with Store(workspace.store_path) as store:
        status = workspace_status(workspace, store)
    assert status["last_round"] is None


# prefscout simulate


@pytest.fixture(scope="module")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding cache shared by the simulate tests, so the example corpus is embedded once."""
    return tmp_path_factory.mktemp("simulate-cache") / "embeddings.npz"


def simulation_input(embedding_cache: Path, policy_model: str, policy_cache: Path | None) -> SimulationInput:
    return SimulationInput(
        outputs=EXAMPLE_OUTPUTS,
        oracle="bt-synthetic",
        embedding_cache=embedding_cache,
        policy_model=policy_model,
        policy_cache=policy_cache,
    )


def test_simulation_policy_logprob(embedding_cache: Path, policy_folder: Path, tmp_path: Path) -> None:
    data, _, corpus = build_simulation(simulation_input(embedding_cache, str(policy_folder), tmp_path / "policy.npz"))
    model, tokenizer = load_policy(str(policy_folder))
    scored = np.isin(corpus.response_prompt, corpus.response_prompt[data.pair_a])
    positions = np.flatnonzero(scored)
    expected = mean_token_logprob(
        model,
        tokenizer,
        [corpus.prompts[corpus.response_prompt[position]] for position in positions],
        [corpus.texts[position] for position in positions],
    )
    assert data.policy_logprob.shape == (corpus.n_responses,)
    np.testing.assert_allclose(data.policy_logprob[positions], expected, atol=1e-5)
    assert np.all(data.policy_logprob[~scored] == 0.0)


def test_simulation_policy_cache_reused(
    embedding_cache: Path, policy_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "policy.npz"
    first, _, _ = build_simulation(simulation_input(embedding_cache, str(policy_folder), cache))
    monkeypatch.setattr(acquisition.policy, "load_policy_model", fail_if_loaded)
    second, _, _ = build_simulation(simulation_input(embedding_cache, str(policy_folder), cache))
    np.testing.assert_array_equal(first.policy_logprob, second.policy_logprob)


def test_simulation_policy_cache_mismatch(
    embedding_cache: Path, policy_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "policy.npz"
    corpus = read_corpus(EXAMPLE_OUTPUTS)
    np.savez(cache, model=np.asarray("another-model"), texts_hash=np.asarray("0" * 64), logprob=np.zeros(corpus.n_responses))
    with caplog.at_level(logging.WARNING, logger="engine.simulator_corpus"):
        data, _, _ = build_simulation(simulation_input(embedding_cache, str(policy_folder), cache))
    with np.load(cache) as stored:
        stored_model = str(stored["model"])
    assert "computing them again" in caplog.text
    assert stored_model == policy_cache_key(str(policy_folder))
    assert np.any(data.policy_logprob < 0.0)


def test_cli_simulate_with_policy(policy_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pools = []
    real_select = engine.simulator.select_batch

    def recording_select(strategy, pool, k, rng, *, model=None, **options):
        pools.append(pool)
        return real_select(strategy, pool, k, rng, model=model, **options)

    monkeypatch.setattr(engine.simulator, "select_batch", recording_select)
    out = tmp_path / "sim"
    status = main([
        "simulate", "--outputs", str(EXAMPLE_OUTPUTS), "--oracle", "bt-synthetic", "--strategies", "hybrid",
        "--budget", "2", "--rounds", "2", "--seeds", "1", "--members", "2", "--out", str(out),
        "--policy-model", str(policy_folder),
    ])
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert status == 0
    assert (out / "policy_logprobs.npz").exists()
    assert run["settings"]["policy_model"] == str(policy_folder)
    assert len(pools) == 2
    assert all(pool.policy_logprob is not None for pool in pools)
