"""Read model outputs from JSON Lines (optionally gzip), Parquet and CSV files and validate each row.

Rows come out as `OutputRecord`s or as `RowProblem`s that name the file, the line (or row) and the
fix. Reading never stops at the first bad row, so a user sees every problem of a file at once.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InputError

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class FieldMap:
    """Names of the input columns that hold each part of a record."""

    prompt: str = "prompt"
    response: str = "response"
    model: str = "model"
    prompt_id: str = "prompt_id"
    response_id: str = "response_id"

    def structural(self) -> set[str]:
        return {self.prompt, self.response, self.model, self.prompt_id, self.response_id}


@dataclass(frozen=True)
class Location:
    path: Path
    line: int  # 1-based line of a JSON Lines or CSV file, 1-based row of a Parquet file
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path} row {self.line}"


@dataclass(frozen=True)
class OutputRecord:
    prompt_id: str
    prompt: str
    response_id: str
    response: str
    model: str | None
    metadata: dict[str, Any]
    location: Location


@dataclass(frozen=True)
class RowProblem:
    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class ReadResult:
    records: list[OutputRecord] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def derive_prompt_id(prompt: str) -> str:
    """Return a content-hash prompt id for a file without prompt ids."""
    return "p-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def derive_response_id(prompt_id: str, response: str) -> str:
    """Return a content-hash response id for a file without response ids."""
    digest = hashlib.sha256(f"{prompt_id}\x1f{response}".encode("utf-8")).hexdigest()
    return "r-" + digest[:16]


def read_outputs(path: Path, fields: FieldMap = FieldMap()) -> ReadResult:
    """Read and validate every row of a model-outputs file."""
    result = ReadResult()
    for location, row in iter_rows(path):
        if isinstance(row, RowProblem):
            result.problems.append(row)
            continue
        checked = validate_row(row, location, fields)
        if isinstance(checked, RowProblem):
            result.problems.append(checked)
        else:
            result.records.append(checked)
    return result


def iter_rows(path: Path) -> Iterator[tuple[Location, dict[str, Any] | RowProblem]]:
    """Yield (location, row dict or problem) for each row of a JSON Lines, Parquet or CSV file."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json", ".ndjson.gz")):
        yield from _iter_json_lines(path)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith(".csv"):
        yield from _iter_csv(path)
    else:
        raise InputError(
            f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)} "
            "(JSON Lines, gzip-compressed JSON Lines, Parquet or CSV with a header row)"
        )


def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _iter_json_lines(path: Path) -> Iterator[tuple[Location, dict[str, Any] | RowProblem]]:
    try:
        with _open_bytes(path) as handle:
            for number, raw in enumerate(handle, start=1):
                location = Location(path, number)
                yield location, _parse_json_line(raw, location)
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read the file ({error}); check that it is complete") from error


def _parse_json_line(raw: bytes, location: Location) -> dict[str, Any] | RowProblem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return RowProblem(
            location,
            f"bytes that are not UTF-8 at column {error.start + 1}; re-encode the file as UTF-8 "
            "(for example `iconv -f latin1 -t utf-8`)",
        )
    if location.line == 1:
        text = text.removeprefix("\ufeff")  # a byte order mark that some editors write
    if not text.strip():
        return RowProblem(location, "empty line; remove it")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return RowProblem(location, f"malformed JSON ({error.msg} at column {error.colno}); fix or remove the line")
    if not isinstance(row, dict):
        return RowProblem(location, f"expected a JSON object, found {type(row).__name__}")
    return row


def _iter_parquet(path: Path) -> Iterator[tuple[Location, dict[str, Any] | RowProblem]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a broken file
        raise InputError(f"{path}: cannot read the Parquet file ({error})") from error
    for number, row in enumerate(table.to_pylist(), start=1):
        yield Location(path, number, unit="row"), row


def _iter_csv(path: Path) -> Iterator[tuple[Location, dict[str, Any] | RowProblem]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            f"{path}:{line}: bytes that are not UTF-8; re-encode the file as UTF-8 "
            "(for example `iconv -f latin1 -t utf-8`)"
        ) from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            # line_num is the line where the record ends, which differs from the start for
            # fields with embedded newlines; it is the line a user's editor shows for the error.
            location = Location(path, reader.line_num)
            if None in row:
                yield location, RowProblem(location, "more fields than the header row has; quote fields that contain commas")
                continue
            yield location, row
    except csv.Error as error:
        raise InputError(f"{path}:{reader.line_num}: malformed CSV ({error})") from error


def validate_row(row: dict[str, Any], location: Location, fields: FieldMap) -> OutputRecord | RowProblem:
    """Check one row and return it as an `OutputRecord`, or return a `RowProblem` describing what is wrong."""
    prompt = row.get(fields.prompt)
    response = row.get(fields.response)
    if fields.prompt not in row:
        return RowProblem(location, f"missing prompt field {fields.prompt!r}; set --prompt-field to the column that holds the prompt")
    if fields.response not in row:
        return RowProblem(location, f"missing response field {fields.response!r}; set --response-field to the column that holds the response")
    if prompt is None:
        return RowProblem(location, "prompt is null; fix the row or remove it")
    if response is None:
        return RowProblem(location, "response is null; fix the row or remove it")
    if not isinstance(prompt, str):
        return RowProblem(location, f"prompt must be a string, found {_describe(prompt)}")
    if not isinstance(response, str):
        return RowProblem(location, f"response must be a string, found {_describe(response)}; fix the row or remove it")
    if is_blank(prompt):
        return RowProblem(location, "empty prompt; remove the row")
    if is_blank(response):
        return RowProblem(location, "empty or whitespace-only response; nothing to compare, remove the row")

    conversation_problem = check_messages(row.get("messages"), response)
    if conversation_problem is not None:
        return RowProblem(location, conversation_problem)

    try:
        prompt_id = _optional_id(row.get(fields.prompt_id))
        response_id = _optional_id(row.get(fields.response_id))
    except ValueError as error:
        return RowProblem(location, str(error))
    prompt_id = prompt_id or derive_prompt_id(prompt)
    response_id = response_id or derive_response_id(prompt_id, response)

    model = row.get(fields.model)
    metadata = {
        key: _json_safe(value) for key, value in row.items() if key not in fields.structural()
    }
    return OutputRecord(
        prompt_id=prompt_id,
        prompt=prompt,
        response_id=response_id,
        response=response,
        model=None if model in (None, "") else str(model),
        metadata=metadata,
        location=location,
    )


def check_messages(messages: Any, response: str) -> str | None:
    """Check an optional `messages` field: {role, content} turns ending with this response.

    Annotators see `response`, and the conversational export takes its turns from `messages`, so the
    two must agree. Returns what is wrong, or None.
    """
    if messages is None:
        return None
    expected = (
        "`messages` must be a list of {role, content} turns whose last turn is the assistant turn "
        "holding exactly the response text; fix the row or remove the field"
    )
    if not isinstance(messages, list) or not messages:
        return expected
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            return expected
    last = messages[-1]
    if last["role"] != "assistant" or last["content"] != response:
        return expected
    return None


def is_blank(text: str) -> bool:
    """Tell whether `text` has no visible character: only whitespace, controls or format characters."""
    return all(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in text)


def _optional_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"ids must be strings or integers, found {_describe(value)}")
    return str(value)


def _describe(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False, default=str)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


def _json_safe(value: Any) -> Any:
    """Convert Parquet and CSV values to what json.dumps stores (NaN becomes null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return str(value)
