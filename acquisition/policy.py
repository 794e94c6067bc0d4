"""Policy-likelihood novelty: how unlikely a response is under a `transformers` causal LM.

The mean token log-probability of a response given its prompt is the direct measure of "rarely
sampled": a response the policy would seldom write scores low. Pass the result to
`CandidatePool(policy_logprob=...)`, and novelty then favours the least likely responses of each
prompt. Two layers, as elsewhere: `load_policy` loads a model, and `mean_token_logprob` works on
any loaded model and tokenizer.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engine.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

# Text placed between the prompt and the response when no chat template is used.
DEFAULT_SEPARATOR = "\n"

# A tokenizer saved without a length limit reports a huge placeholder as model_max_length
# (int(1e30) in transformers 5), so a value at or above this bound means "no limit".
UNSET_TOKENIZER_LIMIT = 10**9

# The strategy option of the novelty score. Policy log-probabilities enter acquisition only
# through that score, so a strategy that takes this option (or any option) can use them.
NOVELTY_OPTION = "n_neighbors"

# A Hugging Face Hub id: `name` or `owner/name`.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")

_Loaded = TypeVar("_Loaded")


def check_policy_name(name: str) -> None:
    """Raise ConfigError when `name` looks like a local path and no such folder exists.

    A name looks like a path when it starts with `.` or `~`, or contains a path separator but is
    not a Hub id of the form `owner/name`. Other names may be Hub ids and are left to the loader.
    """
    folder = Path(name).expanduser()
    looks_like_path = name.startswith((".", "~")) or (
        ("/" in name or os.sep in name) and _HUB_ID.fullmatch(name) is None
    )
    if looks_like_path and not folder.is_dir():
        raise ConfigError(
            f"policy model folder {name!r} not found (looked for {folder.resolve()}): pass the folder "
            "that contains the causal language model's config.json, weights and tokenizer (as "
            "save_pretrained writes them), or a Hugging Face Hub id such as 'openai-community/gpt2'."
        )


def load_policy_config(name: str) -> Any:
    """Load the `transformers` config of a policy model by Hub id or local folder.

    Raises ConfigError when the folder is missing or the config cannot be loaded.
    """
    from transformers import AutoConfig

    return _load(name, "config", lambda: AutoConfig.from_pretrained(name))


def load_policy_tokenizer(name: str) -> Any:
    """Load the tokenizer of a policy model by Hub id or local folder.

    Raises ConfigError when the folder is missing or the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    return _load(name, "tokenizer", lambda: AutoTokenizer.from_pretrained(name))


def load_policy_model(name: str, *, device: str | None = None) -> Any:
    """Load a causal LM by Hub id or local folder, in eval mode on `device`.

    `device` None picks CUDA when torch finds it, else the CPU. On CUDA the model runs in bfloat16.
    Raises ConfigError when the model cannot be loaded, or when its checkpoint lacks weights of
    the causal LM (an encoder such as a sentence-transformers model has no language model head,
    and transformers would fill one with random values).

    NOTE: an encoder checkpoint that ships a masked-LM head (bert-base-uncased) loads with no
    missing weights, so it passes this check although it attends in both directions.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from engine.embedding import pick_device

    resolved = pick_device(device)
    dtype = torch.bfloat16 if resolved.startswith("cuda") else torch.float32
    model, info = _load(
        name, "model", lambda: AutoModelForCausalLM.from_pretrained(name, dtype=dtype, output_loading_info=True)
    )
    missing = sorted(info["missing_keys"])
    if missing:
        examples = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(
            f"the policy model {name!r} is not a causal language model checkpoint: {len(missing)} weights "
            f"of {type(model).__name__} are missing from it ({examples}), so transformers would fill them "
            "with random values. Pass a decoder checkpoint such as GPT-2, Llama or Qwen, not an encoder "
            "or embedding model."
        )
    model.to(resolved).eval()
    return model


def load_policy(name: str, *, device: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer by Hub id or local folder; see `load_policy_model`."""
    tokenizer = load_policy_tokenizer(name)
    return load_policy_model(name, device=device), tokenizer


def _load(name: str, part: str, loader: Callable[[], _Loaded]) -> _Loaded:
    """Run a transformers loader, turning a missing folder and a load failure into ConfigError."""
    check_policy_name(name)
    try:
        return loader()
    except (OSError, ValueError) as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"could not load the {part} of the policy model {name!r} ({type(error).__name__}: {detail}): "
            "pass a local folder or a Hugging Face Hub id of a causal language model."
        ) from error


def policy_cache_key(name: str) -> str:
    """Return the name under which a policy model's log-probabilities are cached.

    A local folder is keyed by its absolute path, so the same relative name run from two folders
    never shares cached values. A Hub id is kept as given.
    """
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


def strategy_uses_policy(strategy: str) -> bool:
    """Return whether the named strategy scores novelty, the only score that reads policy log-probabilities.

    A strategy that takes the novelty option `n_neighbors`, or any option, counts as scoring
    novelty. `random` takes none, so it never needs the policy model.

    NOTE: a registered strategy that scores novelty without taking `n_neighbors` is not detected.
    """
    from acquisition.registry import strategy_options

    accepted = strategy_options(strategy)
    return accepted is None or NOVELTY_OPTION in accepted


def position_limit(config: Any, tokenizer: Any) -> int | None:
    """Return the max sequence length in tokens that the model accepts, or None when neither source states it.

    The limit is the smaller of the config's position count (`max_position_embeddings`,
    `n_positions` or `n_ctx`, read from the text part of a multimodal config) and the tokenizer's
    `model_max_length`, the latter only when it is below UNSET_TOKENIZER_LIMIT.
    """
    limits = []
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(text_config, attribute, None)
        if _is_positive_int(value):
            limits.append(value)
            break
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if _is_positive_int(tokenizer_limit) and tokenizer_limit < UNSET_TOKENIZER_LIMIT:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def cap_max_length(max_length: int, config: Any, tokenizer: Any) -> int:
    """Return `max_length` lowered to the model's `position_limit`, when it has a smaller one.

    Raises ConfigError when the model accepts fewer than 2 tokens, too few to score a response.
    """
    limit = position_limit(config, tokenizer)
    if limit is None or limit >= max_length:
        return max_length
    if limit < 2:
        raise ConfigError(
            f"the policy model accepts at most {limit} token(s), expected at least 2 (one prompt token and "
            "one response token): pass another policy model."
        )
    logger.info("the policy model accepts at most %d tokens, so max length %d is lowered to %d", limit, max_length, limit)
    return limit


def has_tokens(tokenizer: Any, response: str) -> bool:
    """Return whether `response` gives at least one token, so that it has a log-probability."""
    return bool(_response_ids(tokenizer, response))


def fill_tokenless(logprob: np.ndarray, response_prompt: np.ndarray) -> np.ndarray:
    """Give each NaN (a response without tokens) the lowest log-probability among its prompt's responses.

    Such a response then counts as the least likely, so the most novel, answer to its prompt. When
    none of a prompt's responses has a log-probability, they all get 0.0: novelty ranks
    log-probabilities within a prompt, so one shared value ranks them equal.

    Args:
        logprob: (R,) float64 log-probabilities, NaN where a response has no tokens.
        response_prompt: (R,) prompt of each response.

    Returns:
        (R,) float64, finite wherever `logprob` was finite or NaN.
    """
    filled = np.array(logprob, dtype=np.float64)
    tokenless = np.isnan(filled)
    for prompt in np.unique(response_prompt[tokenless]):
        members = response_prompt == prompt
        known = filled[members & ~tokenless]
        filled[members & tokenless] = known.min() if known.size else 0.0
    return filled


def fill_tokenless_with_warning(
    logprob: np.ndarray, response_prompt: np.ndarray, response_ids: Sequence[str], model_key: str
) -> np.ndarray:
    """Return `fill_tokenless(logprob, response_prompt)`, first warning with the ids of the NaN entries.

    `response_ids` (R,) names each position, so the warning says which responses have no tokens.
    """
    tokenless = np.flatnonzero(np.isnan(logprob))
    if tokenless.size:
        logger.warning(
            "responses without tokens under the tokenizer of %s: %d (%s); each gets the lowest "
            "log-probability of its prompt's responses",
            model_key,
            tokenless.size,
            describe_ids([response_ids[position] for position in tokenless]),
        )
    return fill_tokenless(logprob, response_prompt)


def describe_ids(ids: Sequence[str], limit: int = 10) -> str:
    """Return the first `limit` ids, comma-separated, and how many more there are."""
    text = ", ".join(ids[:limit])
    return text + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def mean_token_logprob(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    separator: str = DEFAULT_SEPARATOR,
) -> np.ndarray:
    """Return the mean log-probability (nats) of each response's tokens given its prompt, (N,) float64.

    The input is the tokenized `prompt + separator` followed by the tokenized response, and only the
    response tokens are scored. `max_length` is lowered to the model's `position_limit` when that
    is smaller. When prompt and response exceed it, the prompt loses tokens from its start first,
    then the response from its end. Batches are right-padded and run on the model's device.

    A response without tokens (for example a lone combining accent, which BERT-style tokenizers
    drop) has no log-probability and gets NaN; `fill_tokenless` replaces those.

    Raises InputError when the lists differ in length.
    """
    import torch

    if len(prompts) != len(responses):
        raise InputError(f"got {len(prompts)} prompts and {len(responses)} responses, expected one prompt per response.")
    if batch_size < 1 or max_length < 2:
        raise ConfigError(f"batch_size {batch_size} and max_length {max_length}: expected >= 1 and >= 2.")
    capped = cap_max_length(max_length, model.config, tokenizer)
    started = time.perf_counter()
    sequences = [
        _encode(tokenizer, prompt + separator, response, capped)
        for prompt, response in zip(prompts, responses)
    ]
    scores = np.full(len(sequences), np.nan)
    tokenless = [index for index, (_, n_prompt) in enumerate(sequences) if n_prompt is None]
    if tokenless:
        logger.warning("responses without tokens get a NaN log-probability: %d (positions %s)",
                       len(tokenless), describe_ids([str(index) for index in tokenless]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    # Batches of similar lengths waste less compute on padding, so run the longest sequences first.
    order = sorted(
        (index for index, (_, n_prompt) in enumerate(sequences) if n_prompt is not None),
        key=lambda index: -len(sequences[index][0]),
    )

    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        batch = [sequences[index] for index in positions]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
            scored[row, max(n_prompt, 1) : len(ids)] = True

        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V) predicts token t+1
        targets = input_ids[:, 1:].to(device)
        token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        mask = scored[:, 1:].to(device)
        sums = (token_scores * mask).sum(dim=1)
        scores[positions] = (sums / mask.sum(dim=1)).cpu().numpy()

    logger.info("scored %d responses under the policy in %.1f s", len(order), time.perf_counter() - started)
    return scores


def _response_ids(tokenizer: Any, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"]


def _encode(tokenizer: Any, prompt: str, response: str, max_length: int) -> tuple[list[int], int | None]:
    """Return (token ids of prompt then response, number of prompt tokens), at most max_length ids.

    The number of prompt tokens is None when the response has no tokens.
    """
    response_ids = _response_ids(tokenizer, response)
    if not response_ids:
        return [], None
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = response_ids[: max_length - 1]
    keep_prompt = max(max_length - len(response_ids), 1)
    prompt_ids = prompt_ids[-keep_prompt:]
    return prompt_ids + response_ids, len(prompt_ids)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
