"""Tests of policy-likelihood novelty with a tiny randomly initialised causal LM built from a config.

The tokenizer is a byte-level BPE trained in memory on a few sentences, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from acquisition.policy import mean_token_logprob
from engine.errors import InputError

PROMPTS = ["Combien font 2 + 2 ?", "Name a colour.", "Écris un haïku 🌸"]
RESPONSES = ["4", "Blue, or perhaps a deep ultramarine like the sea at dusk.", "Pétales au vent 🌸\nle silence"]


@pytest.fixture(scope="module")
def policy() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(PROMPTS + RESPONSES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=256, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval(), fast


def reference_logprob(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, prompt: str, response: str) -> float:
    """Score one example alone, without padding, token by token."""
    prompt_ids = tokenizer(prompt + "\n")["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
    scores = [float(log_probs[len(prompt_ids) + i - 1, token]) for i, token in enumerate(response_ids)]
    return float(np.mean(scores))


def test_logprob_matches_unbatched_reference(policy) -> None:
    model, tokenizer = policy
    scores = mean_token_logprob(model, tokenizer, PROMPTS, RESPONSES, batch_size=3)
    expected = [reference_logprob(model, tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_logprob_independent_of_batch_size(policy) -> None:
    model, tokenizer = policy
    batched = mean_token_logprob(model, tokenizer, PROMPTS, RESPONSES, batch_size=3)
    single = mean_token_logprob(model, tokenizer, PROMPTS, RESPONSES, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_logprob_shape_and_sign(policy) -> None:
    model, tokenizer = policy
    scores = mean_token_logprob(model, tokenizer, PROMPTS, RESPONSES)
    assert scores.shape == (3,)
    assert np.all(scores < 0.0)


def test_logprob_truncates_long_input(policy) -> None:
    model, tokenizer = policy
    scores = mean_token_logprob(model, tokenizer, [PROMPTS[0] * 40], [RESPONSES[1] * 10], max_length=64)
    assert np.isfinite(scores).all()


def test_logprob_rejects_length_mismatch(policy) -> None:
    model, tokenizer = policy
    with pytest.raises(InputError, match="one prompt per response"):
        mean_token_logprob(model, tokenizer, PROMPTS, RESPONSES[:2])
