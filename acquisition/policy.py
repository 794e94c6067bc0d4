"""Policy-likelihood novelty: how unlikely a response is under a `transformers` causal LM.

The mean token log-probability of a response given its prompt is the direct measure of "rarely
sampled": a response the policy would seldom write scores low. Pass the result to
`CandidatePool(policy_logprob=...)`, and novelty then favours the least likely responses of each
prompt. Two layers, as elsewhere: `load_policy` loads a model, and `mean_token_logprob` works on
any loaded model and tokenizer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

# Text placed between the prompt and the response when no chat template is used.
DEFAULT_SEPARATOR = "\n"


def load_policy(name: str, *, device: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer by Hub id or local folder, in eval mode on `device`.

    `device` None picks CUDA when torch finds it, else the CPU. On CUDA the model runs in bfloat16.
    Raises ConfigError when the model cannot be loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.embedding import pick_device

    resolved = pick_device(device)
    dtype = torch.bfloat16 if resolved.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"could not load the policy model {name!r} ({type(error).__name__}): pass a local folder "
            "or a Hugging Face Hub id of a causal language model."
        ) from error
    model.to(resolved).eval()
    return model, tokenizer


def policy_cache_key(name: str) -> str:
    """Return the name under which a policy model's log-probabilities are cached.

    A local folder is keyed by its absolute path, so the same relative name run from two folders
    never shares cached values. A Hub id is kept as given.
    """
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


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
    response tokens are scored. When the two exceed `max_length` tokens, the prompt loses tokens
    from its start first, then the response from its end. Batches are right-padded and run on the
    model's device.

    Raises InputError when the lists differ in length or a response has no tokens.
    """
    import torch

    if len(prompts) != len(responses):
        raise InputError(f"got {len(prompts)} prompts and {len(responses)} responses, expected one prompt per response.")
    if batch_size < 1 or max_length < 2:
        raise ConfigError(f"batch_size {batch_size} and max_length {max_length}: expected >= 1 and >= 2.")
    started = time.perf_counter()
    sequences = [
        _encode(tokenizer, prompt + separator, response, max_length)
        for prompt, response in zip(prompts, responses)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    scores = np.empty(len(sequences))
    # Batches of similar lengths waste less compute on padding, so run the longest sequences first.
    order = sorted(range(len(sequences)), key=lambda index: -len(sequences[index][0]))

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

    logger.info("scored %d responses under the policy in %.1f s", len(sequences), time.perf_counter() - started)
    return scores


def _encode(tokenizer: Any, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Return (token ids of prompt then response, number of prompt tokens), at most max_length ids."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if not response_ids:
        raise InputError(f"the response {response[:40]!r} has no tokens, so it has no log-probability.")
    response_ids = response_ids[: max_length - 1]
    keep_prompt = max(max_length - len(response_ids), 1)
    prompt_ids = prompt_ids[-keep_prompt:]
    return prompt_ids + response_ids, len(prompt_ids)
