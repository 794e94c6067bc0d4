"""TRL's DPO and KTO trainers consume the exported `datasets` folders unchanged.

The model is a 2-layer Llama with random weights and a character-level tokenizer built offline, so
these tests need no download and run on the CPU in seconds.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import datasets
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from engine.export import export_dataset
from engine.store import Store
from engine.workspace import ExportSettings
from test_export import populate

trl = pytest.importorskip("trl")
from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt  # noqa: E402

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of 8 prompts with decisive, tie and both-bad pairs, all in the train split."""
    root = tmp_path_factory.mktemp("trainers")
    with Store(root / "store.sqlite3") as store:
        populate(store, prompts=8)
        first_pair = store.execute("SELECT pair_id FROM pairs ORDER BY pair_id LIMIT 1").fetchone()[0]
        store.execute("UPDATE votes SET outcome = 'both_bad' WHERE pair_id = ?", (first_pair,))
        export_dataset(store, root / "out", ExportSettings(test_fraction=0))
    return root / "out"


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the characters of `texts` and the chat template's markers."""
    characters = sorted(set("".join(texts)) | set("<>assistantuserystem"))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + characters)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    wrapped.padding_side = "left"
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_model(vocab_size: int) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama; the trainers get a copy of it as the reference model."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    return LlamaForCausalLM(config)


def texts_of(dataset: datasets.Dataset) -> list[str]:
    return [json.dumps(row, ensure_ascii=False) for row in dataset]


def training_args(config_class, output_dir: Path, **extra):
    return config_class(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, max_length=256, seed=0, **extra,
    )


@pytest.mark.parametrize("form", ["standard", "conversational"])
def test_dpo_two_steps(export_dir, tmp_path, form):
    train = datasets.load_from_disk(str(export_dir / "hf" / form))["train"]
    tokenizer = build_tokenizer(texts_of(train))

    prepared = [maybe_apply_chat_template(maybe_extract_prompt(example), tokenizer) for example in train]
    assert all(set(example) >= {"prompt", "chosen", "rejected"} for example in prepared)
    assert is_conversational(train[0]) == (form == "conversational")

    model = tiny_model(len(tokenizer))
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=training_args(trl.DPOConfig, tmp_path),
        train_dataset=train,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)


def test_kto_two_steps(export_dir, tmp_path):
    train = datasets.load_from_disk(str(export_dir / "hf" / "kto"))["train"]
    assert set(train["label"]) == {True, False}
    tokenizer = build_tokenizer(texts_of(train))

    model = tiny_model(len(tokenizer))
    trainer = trl.KTOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=training_args(trl.KTOConfig, tmp_path),
        train_dataset=train,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)


def test_kto_both_bad_rows(export_dir):
    kto = datasets.load_from_disk(str(export_dir / "hf" / "kto"))["train"]
    both_bad = [row for row in kto if row["outcome"] == "both_bad"]
    assert len(both_bad) == 2
    assert not any(row["label"] for row in both_bad)


def test_jsonl_loads_like_folder(export_dir, tmp_path):
    from_json = datasets.load_dataset(
        "json", data_files=str(export_dir / "train.jsonl"), split="train", cache_dir=str(tmp_path / "cache")
    )
    from_folder = datasets.load_from_disk(str(export_dir / "hf" / "standard"))["train"]
    assert from_json["chosen"] == from_folder["chosen"]
    assert from_json["prompt"] == from_folder["prompt"]
