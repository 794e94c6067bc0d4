"""`prefscout round` builds its pool and preference model as the simulator does: modes, generator one-hot, options."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import engine.preference
import engine.rounds
from acquisition.modes import DEFAULT_MODE_THRESHOLD
from acquisition.strategies import ANSWER_NOVELTY_WEIGHT, DEFAULT_NOVELTY_WEIGHT, select_hybrid
from engine.cli import build_parser
from engine.commands import run_round as run_round_command
from engine.errors import ConfigError, InputError
from engine.ingest import ingest_file
from engine.rounds import load_corpus, run_round, training_votes
from engine.status import workspace_status
from engine.store import Store, utc_now
from engine.workspace import RoundSettings, Workspace

DIMENSION = 8
MODELS = ("alpha", "beta", "gamma")
PROMPTS = 6


class SeededEmbedder:
    """A fake embedder: a unit vector drawn from a generator seeded by the text's SHA-256."""

    def embed(self, texts):
        from engine.embedding import EmbeddingResult

        vectors = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        for position, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            vector = np.random.default_rng(seed).normal(size=DIMENSION).astype(np.float32)
            vectors[position] = vector / np.linalg.norm(vector)
        count = len(texts)
        return EmbeddingResult(
            vectors=vectors,
            n_tokens=np.ones(count, dtype=np.int64),
            n_windows=np.ones(count, dtype=np.int64),
            truncated=np.zeros(count, dtype=bool),
        )


def output_rows(correct_model: str = "alpha") -> list[dict]:
    """Four responses per prompt: two share answer 1, the others give 2 and 3."""
    rows = []
    for prompt in range(PROMPTS):
        for index, (model, answer) in enumerate(zip(MODELS + ("alpha",), ("1", "1", "2", "3"))):
            rows.append({
                "prompt_id": f"p{prompt}",
                "prompt": f"Combien font {prompt} + 1 ? 🙂",
                "response_id": f"p{prompt}-r{index}",
                "model": model,
                "response": f"Réponse {index} de {model} : {answer} (p{prompt})",
                "answer_key": answer,
                "correct": model == correct_model,
            })
    return rows


def make_workspace(root: Path, rows: list[dict]) -> Workspace:
    workspace = Workspace(root)
    workspace.create()
    path = root / "outputs.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    with Store(workspace.store_path) as store:
        ingest_file(workspace, store, path, embedder_factory=lambda space: SeededEmbedder())
    return workspace


def add_votes(store: Store) -> int:
    """Vote on every selected pair for the response of the model listed first in MODELS; return the count."""
    rank = {name: position for position, name in enumerate(MODELS)}
    model_of = {response.row: response.model for response in store.responses()}
    added = 0
    with store.transaction() as db:
        for pair in store.pairs().values():
            first, second = rank[model_of[pair.response_a]], rank[model_of[pair.response_b]]
            outcome = "tie"
            if first < second:
                outcome = "a"
            elif first > second:
                outcome = "b"
            db.execute(
                "INSERT INTO votes (pair_id, annotator, outcome, shown_left, source, external_id, created_at, updated_at) "
                "VALUES (?, 'annotator-1', ?, ?, 'test', ?, ?, ?)",
                (pair.pair_id, outcome, pair.left_side, pair.pair_id, utc_now(), utc_now()),
            )
            added += 1
    return added


class SelectionRecorder:
    """Wraps the real `select_batch` and keeps the pool, model and options of each call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.real = engine.rounds.select_batch

    def __call__(self, strategy, pool, k, rng, *, model=None, **options):
        self.calls.append({"pool": pool, "model": model, "options": options})
        return self.real(strategy, pool, k, rng, model=model, **options)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws", output_rows())


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> SelectionRecorder:
    recorder = SelectionRecorder()
    monkeypatch.setattr(engine.rounds, "select_batch", recorder)
    return recorder


def test_round_settings_defaults_match_library() -> None:
    settings = RoundSettings()
    hybrid_optimism = inspect.signature(select_hybrid).parameters["optimism"].default
    assert settings.mode_threshold == DEFAULT_MODE_THRESHOLD
    assert settings.novelty_weight is None
    assert settings.optimism == hybrid_optimism
    assert settings.mode_field is None
    assert settings.generator_feature is False


def test_pool_modes_from_field(workspace: Workspace, recorder: SelectionRecorder) -> None:
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(mode_field="answer_key"))
        answers = {response.row: response.metadata["answer_key"] for response in store.responses()}
        corpus = load_corpus(workspace, store)
    pool = recorder.calls[0]["pool"]
    expected_groups = {(int(prompt), answers[int(row)]) for row, prompt in zip(corpus.rows, corpus.prompt_rows)}
    mode_groups = {(int(prompt), int(mode)) for prompt, mode in zip(pool.response_prompt, pool.modes)}
    assert pool.modes is not None
    assert len(mode_groups) == len(expected_groups)
    for prompt in np.unique(corpus.prompt_rows):
        members = np.flatnonzero(corpus.prompt_rows == prompt)
        same_answer = [answers[int(corpus.rows[position])] == "1" for position in members]
        shared = pool.modes[members[same_answer]]
        assert shared[0] == shared[1]


def test_pool_modes_default_clusters(workspace: Workspace, recorder: SelectionRecorder) -> None:
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=4, seed=0, settings=RoundSettings())
    pool = recorder.calls[0]["pool"]
    # Random 8-dimension vectors of distinct texts are far below cosine 0.9: one cluster per response.
    assert pool.modes is not None
    assert len({(int(p), int(m)) for p, m in zip(pool.response_prompt, pool.modes)}) == pool.embeddings.shape[0]


def test_unknown_mode_field_named(workspace: Workspace) -> None:
    with Store(workspace.store_path) as store:
        with pytest.raises(InputError, match="'final_answer'"):
            run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(mode_field="final_answer"))


def test_oracle_mode_field_rejected(workspace: Workspace) -> None:
    with Store(workspace.store_path) as store:
        with pytest.raises(ConfigError, match="'correct' is an oracle field"):
            run_round(workspace, store, budget=4, seed=0, settings=RoundSettings(mode_field="correct"))


def test_generator_one_hot_features(workspace: Workspace) -> None:
    with Store(workspace.store_path) as store:
        corpus = load_corpus(workspace, store, generator_feature=True)
        model_of = {response.row: response.model for response in store.responses()}
    one_hot = corpus.features[:, DIMENSION:]
    assert corpus.features.shape == (PROMPTS * 4, DIMENSION + len(MODELS))
    assert np.array_equal(corpus.features[:, :DIMENSION], corpus.embeddings)
    assert np.all(one_hot.sum(axis=1) == 1.0)
    for position, row in enumerate(corpus.rows.tolist()):
        assert one_hot[position, sorted(MODELS).index(model_of[row])] == 1.0


def test_model_trains_on_generator_one_hot(workspace: Workspace, recorder: SelectionRecorder) -> None:
    settings = RoundSettings(generator_feature=True)
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=12, seed=0, settings=settings)
        add_votes(store)
        corpus = load_corpus(workspace, store, generator_feature=True)
        diffs, labels, _ = training_votes(store, corpus)
        run_round(workspace, store, budget=4, seed=1, settings=settings)
    model = recorder.calls[1]["model"]
    pool = recorder.calls[1]["pool"]
    alpha, gamma = DIMENSION + sorted(MODELS).index("alpha"), DIMENSION + sorted(MODELS).index("gamma")
    assert diffs.shape[1] == DIMENSION + len(MODELS)
    assert len(labels) > 2
    assert model is not None
    assert model.dim == DIMENSION + len(MODELS)
    assert pool.dim == model.dim
    # Votes favour alpha over gamma, so the fitted weight of alpha's column is the larger.
    assert model.weights.mean(axis=0)[alpha] > model.weights.mean(axis=0)[gamma]


def test_status_heldout_uses_generator_feature(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = workspace.load_config()
    config.round.generator_feature = True
    workspace.save_config(config)
    widths: list[int] = []
    real = engine.preference.evaluate_heldout

    def recording_evaluate(diffs, labels, groups, *args, **kwargs):
        widths.append(diffs.shape[1])
        return real(diffs, labels, groups, *args, **kwargs)

    monkeypatch.setattr(engine.preference, "evaluate_heldout", recording_evaluate)
    with Store(workspace.store_path) as store:
        run_round(workspace, store, budget=12, seed=0)
        add_votes(store)
        workspace_status(workspace, store)
    assert widths == [DIMENSION + len(MODELS)]


def test_selection_ignores_oracle_fields(tmp_path: Path) -> None:
    selected = []
    for correct_model in ("alpha", "gamma"):
        workspace = make_workspace(tmp_path / correct_model, output_rows(correct_model))
        settings = RoundSettings(mode_field="answer_key", generator_feature=True)
        with Store(workspace.store_path) as store:
            run_round(workspace, store, budget=12, seed=0, settings=settings)
            add_votes(store)
            run_round(workspace, store, budget=6, seed=1, settings=settings)
            selected.append(sorted(store.pairs()))
    assert selected[0] == selected[1]


def test_cli_round_options_recorded(workspace: Workspace, recorder: SelectionRecorder) -> None:
    args = build_parser().parse_args([
        "round", "--budget", "4", "--seed", "0", "--no-push", "--mode-field", "answer_key",
        "--generator-feature", "--novelty-weight", "1.0", "--no-optimism",
    ])
    assert run_round_command(workspace, args) == 0
    with Store(workspace.store_path) as store:
        options = json.loads(store.execute("SELECT options FROM rounds").fetchone()["options"])
    pool = recorder.calls[0]["pool"]
    assert options["novelty_weight"] == 1.0
    assert options["optimism"] is False
    assert pool.features is not None
    assert pool.modes is not None


def test_cli_round_defaults_from_config(workspace: Workspace, recorder: SelectionRecorder) -> None:
    args = build_parser().parse_args(["round", "--budget", "4", "--seed", "0", "--no-push"])
    assert isinstance(args, argparse.Namespace)
    assert run_round_command(workspace, args) == 0
    options = recorder.calls[0]["options"]
    pool = recorder.calls[0]["pool"]
    assert options["novelty_weight"] == DEFAULT_NOVELTY_WEIGHT
    assert options["optimism"] is True
    assert pool.features is None


def test_cli_round_answer_modes_novelty_weight(workspace: Workspace, recorder: SelectionRecorder) -> None:
    args = build_parser().parse_args(
        ["round", "--budget", "4", "--seed", "0", "--no-push", "--mode-field", "answer_key"]
    )
    assert run_round_command(workspace, args) == 0
    assert recorder.calls[0]["options"]["novelty_weight"] == ANSWER_NOVELTY_WEIGHT
