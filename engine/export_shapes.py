"""Turn one voted pair into preference texts, and check exported rows against TRL's schemas.

Input shapes handled here:

- Multi-turn conversations: both responses carry a `messages` list of `{role, content}` dicts,
  the whole conversation ending with the response. The prompt is the longest common prefix of
  the two lists, and chosen / rejected are the single assistant turns after it. Anything else
  rejects the pair with a reason: no common prefix, a divergence at a user turn, more than one
  turn after the prefix, or an empty turn.
- A response that starts with the whole prompt text: the prompt is cut off the front, so chosen
  is the continuation only and prompt + chosen is the original response.
- Chosen and rejected that differ only in whitespace: never emitted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import InputError

Message = dict[str, str]
MESSAGES_FIELD = "messages"  # response metadata field holding the whole conversation


@dataclass(frozen=True)
class PreferenceTexts:
    """The parts of one preference row; `prompt_messages` is the conversational prompt."""

    prompt_messages: list[Message]
    chosen: str
    rejected: str


def strip_prompt_echo(prompt: str, response: str) -> str:
    """Return `response` without a leading copy of the whole `prompt`.

    >>> strip_prompt_echo("2 + 2 =", "2 + 2 = 4")
    ' 4'
    """
    if prompt and response.startswith(prompt):
        return response[len(prompt):]
    return response


def differ_only_in_whitespace(first: str, second: str) -> bool:
    """Return True when the texts are equal once every whitespace character is removed."""
    return "".join(first.split()) == "".join(second.split())


def message_problem(messages: Any) -> str | None:
    """Return what makes `messages` an invalid conversation, or None when it is valid."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content} objects"
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"message {position} must be an object with exactly the keys role and content"
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            return f"message {position} must have string role and content"
    return None


def split_conversations(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], Message, Message] | str:
    """Split two conversations into (shared prompt, chosen turn, rejected turn), or return why not.

    >>> split_conversations(
    ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
    ... )[0]
    [{'role': 'user', 'content': 'Hi'}]
    """
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        problem = message_problem(messages)
        if problem is not None:
            return f"{name} conversation: {problem}"

    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        return "the conversations share no leading message, so there is no common prompt"
    chosen_rest, rejected_rest = chosen[shared:], rejected[shared:]
    if not chosen_rest or not rejected_rest:
        return "one conversation is a prefix of the other, so one side has no diverging turn"
    if len(chosen_rest) != 1 or len(rejected_rest) != 1:
        return "the conversations differ in more than their last assistant turn"
    if chosen_rest[0]["role"] != "assistant" or rejected_rest[0]["role"] != "assistant":
        return "the conversations diverge at a turn that is not an assistant turn"
    if not chosen_rest[0]["content"].strip() or not rejected_rest[0]["content"].strip():
        return "a diverging assistant turn is empty"
    return chosen[:shared], chosen_rest[0], rejected_rest[0]


def preference_texts(
    prompt: str,
    chosen: str,
    rejected: str,
    chosen_metadata: dict[str, Any],
    rejected_metadata: dict[str, Any],
) -> PreferenceTexts | str:
    """Build the texts of one preference row from a voted pair, or return why the pair is rejected."""
    chosen_messages = chosen_metadata.get(MESSAGES_FIELD)
    rejected_messages = rejected_metadata.get(MESSAGES_FIELD)
    if (chosen_messages is None) != (rejected_messages is None):
        return f"only one response of the pair has a `{MESSAGES_FIELD}` conversation"

    if chosen_messages is not None:
        split = split_conversations(chosen_messages, rejected_messages)
        if isinstance(split, str):
            return split
        prompt_messages, chosen_turn, rejected_turn = split
        texts = PreferenceTexts(prompt_messages, chosen_turn["content"], rejected_turn["content"])
    else:
        if not chosen.strip() or not rejected.strip():
            return "a response is empty or only whitespace"
        texts = PreferenceTexts(
            [{"role": "user", "content": prompt}],
            strip_prompt_echo(prompt, chosen),
            strip_prompt_echo(prompt, rejected),
        )
        if not texts.chosen.strip() or not texts.rejected.strip():
            return "a response only repeats the prompt, so nothing is left to compare"

    if differ_only_in_whitespace(texts.chosen, texts.rejected):
        return "chosen and rejected differ only in whitespace"
    return texts


# Schema checks of exported rows

PreferenceKind = Literal["preference", "kto"]
_REQUIRED = {"preference": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}


def row_problems(row: Any, kind: PreferenceKind = "preference") -> list[str]:
    """Return what makes one row invalid for TRL's standard or conversational format (empty when valid)."""
    if not isinstance(row, dict):
        return [f"expected an object, found {type(row).__name__}"]
    missing = [name for name in _REQUIRED[kind] if row.get(name) is None]
    if missing:
        return [f"missing {', '.join(repr(name) for name in missing)}"]
    if kind == "kto":
        return _kto_problems(row)

    problems = []
    conversational = isinstance(row["prompt"], list)
    for name in ("prompt", "chosen", "rejected"):
        value = row[name]
        if conversational:
            problem = message_problem(value)
            if problem is not None:
                problems.append(f"{name!r}: {problem}")
        elif not isinstance(value, str):
            problems.append(f"{name!r} must be a string like the prompt, found {type(value).__name__}")
        elif not value.strip():
            problems.append(f"{name!r} is empty")
    if problems:
        return problems
    chosen, rejected = (row["chosen"], row["rejected"])
    if conversational:
        chosen, rejected = json.dumps(chosen, ensure_ascii=False), json.dumps(rejected, ensure_ascii=False)
    if differ_only_in_whitespace(chosen, rejected):
        problems.append("chosen and rejected differ only in whitespace")
    return problems


def _kto_problems(row: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(row["label"], bool):
        problems.append(f"'label' must be true or false, found {type(row['label']).__name__}")
    for name in ("prompt", "completion"):
        value = row[name]
        if isinstance(value, list):
            problem = message_problem(value)
            if problem is not None:
                problems.append(f"{name!r}: {problem}")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{name!r} must be a non-empty string or a list of messages")
    return problems


def check_preference_rows(rows: Iterable[Any], *, source: str, kind: PreferenceKind = "preference", limit: int = 20) -> int:
    """Raise InputError naming each invalid row (1-based, with its pair_id); return the row count."""
    problems = []
    count = 0
    for count, row in enumerate(rows, start=1):
        for problem in row_problems(row, kind):
            pair_id = row.get("pair_id") if isinstance(row, dict) else None
            label = f"{source} row {count}" + (f" (pair_id {pair_id})" if pair_id else "")
            problems.append(f"{label}: {problem}")
    if problems:
        shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
        raise InputError(f"{len(problems)} invalid {kind} rows; fix or remove them:\n  " + "\n  ".join(shown))
    return count


def check_preference_file(path: Path, kind: PreferenceKind = "preference") -> int:
    """Check every row of a JSON Lines or Parquet preference file; return the row count."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: Sequence[Any] = pq.read_table(path).to_pylist()
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise InputError(f"{path} row {number}: malformed JSON ({error.msg}); fix or remove the line") from error
    return check_preference_rows(rows, source=str(path), kind=kind)
