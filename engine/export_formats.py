"""Write export rows as TRL standard, conversational and KTO datasets: JSON Lines, Parquet, `datasets`.

Layout under the output folder (each split is `train` and `test`)::

    train.jsonl, train.parquet                     standard: prompt, chosen, rejected (strings)
    conversational/train.jsonl, .parquet           prompt, chosen, rejected as lists of {role, content}
    kto/train.jsonl, .parquet                      prompt, completion, label (unpaired)
    hf/standard, hf/conversational, hf/kto         `datasets.DatasetDict.save_to_disk` folders

Every file is a pure function of the rows, so the same rows give byte-identical files. Metadata
columns follow the trainer columns; TRL's trainers drop columns they do not use.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import ConfigError
from engine.workspace import write_bytes_atomic, write_text_atomic

SPLITS = ("train", "test")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

_METADATA = [
    ("prompt_id", pa.string()), ("chosen_id", pa.string()), ("rejected_id", pa.string()),
    ("chosen_model", pa.string()), ("rejected_model", pa.string()), ("n_votes", pa.int64()),
    ("agreement", pa.float64()), ("round", pa.int64()), ("pair_id", pa.string()),
    ("chosen_shown_left", pa.bool_()), ("weight", pa.float64()), ("prompt_cluster", pa.int64()),
    ("chosen_mode", pa.string()), ("rejected_mode", pa.string()), ("chosen_rare_mode", pa.bool_()),
    ("propensity", pa.float64()),
]
STANDARD_SCHEMA = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()), *_METADATA])
CONVERSATIONAL_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), *_METADATA])
KTO_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()), ("completion", pa.string()), ("label", pa.bool_()),
        ("prompt_id", pa.string()), ("response_id", pa.string()), ("model", pa.string()),
        ("pair_id", pa.string()), ("outcome", pa.string()), ("weight", pa.float64()), ("round", pa.int64()),
    ]
)
COLUMNS = tuple(STANDARD_SCHEMA.names)
KTO_COLUMNS = tuple(KTO_SCHEMA.names)


def standard_record(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in STANDARD_SCHEMA.names}


def conversational_record(row: dict[str, Any]) -> dict[str, Any]:
    record = standard_record(row)
    record["prompt"] = row["prompt_messages"]
    record["chosen"] = [{"role": "assistant", "content": row["chosen"]}]
    record["rejected"] = [{"role": "assistant", "content": row["rejected"]}]
    return record


def kto_records(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the unpaired rows of one pair: chosen desirable and rejected undesirable, or both undesirable."""
    sides = [("chosen", True), ("rejected", False)]
    if row["outcome"] == "both_bad":
        sides = [("chosen", False), ("rejected", False)]
    return [
        {
            "prompt": row["prompt"],
            "completion": row[side],
            "label": label,
            "prompt_id": row["prompt_id"],
            "response_id": row[f"{side}_id"],
            "model": row[f"{side}_model"],
            "pair_id": row["pair_id"],
            "outcome": row["outcome"] if row["outcome"] == "both_bad" else side,
            "weight": row["weight"],
            "round": row["round"],
        }
        for side, label in sides
    ]


def jsonl_text(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def parquet_bytes(records: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=schema), buffer)
    return buffer.getvalue()


def write_formats(
    out_dir: Path,
    splits: dict[str, list[dict[str, Any]]],
    kto_splits: dict[str, list[dict[str, Any]]],
) -> list[Path]:
    """Write every format of every split; return the paths written (HF folders as folders)."""
    formats: list[tuple[str, Path, pa.Schema, dict[str, list[dict[str, Any]]]]] = [
        ("standard", out_dir, STANDARD_SCHEMA, _records(splits, standard_record)),
        ("conversational", out_dir / "conversational", CONVERSATIONAL_SCHEMA, _records(splits, conversational_record)),
        ("kto", out_dir / "kto", KTO_SCHEMA, kto_splits),
    ]
    files: list[Path] = []
    for name, folder, schema, records in formats:
        for split in SPLITS:
            files.append(folder / f"{split}.jsonl")
            write_text_atomic(files[-1], jsonl_text(records[split]))
            files.append(folder / f"{split}.parquet")
            write_bytes_atomic(files[-1], parquet_bytes(records[split], schema))
        files.append(out_dir / "hf" / name)
        save_dataset_dict(files[-1], records, schema)
    return files


def _records(
    splits: dict[str, list[dict[str, Any]]], convert: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    return {split: [convert(row) for row in rows] for split, rows in splits.items()}


def save_dataset_dict(folder: Path, records: dict[str, list[dict[str, Any]]], schema: pa.Schema) -> None:
    """Save the splits with `DatasetDict.save_to_disk`, replacing an earlier export in `folder`.

    The fingerprint is the SHA-256 of the split's Parquet bytes instead of a random one, so the
    folder is byte-identical for the same rows.
    """
    import datasets

    if folder.exists() and not (folder / "dataset_dict.json").exists():
        raise ConfigError(
            f"{folder} exists and is not a saved dataset from an earlier export; move it away or "
            "choose another --out folder"
        )
    tables = {split: pa.Table.from_pylist(rows, schema=schema) for split, rows in records.items()}
    dataset_dict = datasets.DatasetDict(
        {
            split: datasets.Dataset(table, fingerprint=hashlib.sha256(parquet_bytes(rows, schema)).hexdigest()[:16])
            for (split, rows), table in zip(records.items(), tables.values())
        }
    )
    staging = folder.with_name(f".{folder.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    bars_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # One shard per split, because an empty split saved with the default zero shards has no
        # data file and `load_from_disk` then fails on it (datasets 5.2).
        dataset_dict.save_to_disk(str(staging), num_shards={split: 1 for split in records})
    finally:
        if bars_enabled:
            datasets.enable_progress_bars()
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
