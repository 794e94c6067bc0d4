"""What prefscout shows in Label Studio and how an annotation maps back to a vote.

This module contains the pairwise labelling config, the task payload (`PairTask`), and the cut applied
to very long texts before they are shown. It also translates between an annotator's choice and Label
Studio's result list in both directions. It makes no HTTP calls.
"""

from __future__ import annotations

import re
import unicodedata
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, get_args
from xml.sax.saxutils import escape

from engine.errors import InputError

Choice = Literal["left", "right", "tie", "both_bad", "skip"]
CHOICES: tuple[str, ...] = get_args(Choice)

# Control and object tag names of labeling_config.xml; results refer to them in from_name and to_name.
PAIRWISE_CONTROL = "preference"
VERDICT_CONTROL = "verdict"
PROMPT_OBJECT = "prompt"
SIDES = ("left", "right")
VERDICT_CHOICES = {"Tie": "tie", "Both bad": "both_bad"}
TASK_FIELDS = ("pair_id", "prompt", "left", "right")

_INSTRUCTIONS_CLASS = "prefscout-instructions"
_INSTRUCTIONS_PLACEHOLDER = "PREFSCOUT_INSTRUCTIONS"
_INSTRUCTIONS_VIEW = re.compile(rf'\n\s*<View className="{_INSTRUCTIONS_CLASS}".*?</View>', re.DOTALL)
# Characters that attach to the one before them; a cut between the two would change how the text reads.
_ZERO_WIDTH_JOINER = "\u200d"
_VARIATION_SELECTORS = ("\ufe0e", "\ufe0f")
_SKIN_TONES = range(0x1F3FB, 0x1F400)
CUT_MARKER = (
    "\n\n[… cut for display: {hidden:,} of {total:,} characters are not shown here. "
    "prefscout stores and exports the whole text. …]"
)


@dataclass(frozen=True)
class PairTask:
    """One pair to show to annotators; `left` and `right` are the texts in their display order."""

    pair_id: str
    prompt: str
    left: str
    right: str


def labeling_config(instructions: str = "") -> str:
    """Return the Label Studio labelling config (XML) for pairwise tasks.

    `instructions` appear above the prompt on every task, as plain text. Empty instructions remove
    that block.
    """
    # Label Studio stores the config without the trailing newline, so strip it to compare equal.
    template = resources.files(__package__).joinpath("labeling_config.xml").read_text(encoding="utf-8").strip()
    if not instructions.strip():
        return _INSTRUCTIONS_VIEW.sub("", template)
    attribute = escape(instructions, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
    return template.replace(_INSTRUCTIONS_PLACEHOLDER, attribute)


def is_pairwise_config(config: str) -> bool:
    """Return True if `config` is a prefscout pairwise config, whatever its instructions.

    Configs written before the instructions block existed count too, so their projects stay usable.
    """
    return _config_structure(config) == _config_structure(labeling_config(""))


def _config_structure(config: str) -> str | None:
    """Canonical XML of `config` without comments, whitespace and the instructions block."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return None
    for parent in root.iter():
        for child in list(parent):
            if child.get("className") == _INSTRUCTIONS_CLASS:
                parent.remove(child)
    return ElementTree.canonicalize(ElementTree.tostring(root, encoding="unicode"), strip_text=True)


def display_text(text: str, max_chars: int | None) -> str:
    """Return `text` cut to about `max_chars` characters with a visible marker, or unchanged.

    None or 0 means no limit. The cut never separates a character from a combining mark, variation
    selector, skin tone or zero-width joiner that belongs to it, so it may keep a few characters less.
    """
    if not max_chars or len(text) <= max_chars:
        return text
    if max_chars < 0:
        raise InputError(f"invalid max_chars {max_chars}; expected 0 (no limit) or more")

    cut = max_chars
    while cut > 0 and _continues_previous(text, cut):
        cut -= 1
    return text[:cut] + CUT_MARKER.format(hidden=len(text) - cut, total=len(text))


def _continues_previous(text: str, index: int) -> bool:
    character = text[index]
    return (
        unicodedata.combining(character) != 0
        or character == _ZERO_WIDTH_JOINER
        or character in _VARIATION_SELECTORS
        or ord(character) in _SKIN_TONES
        or text[index - 1] == _ZERO_WIDTH_JOINER
    )


def annotation_for_choice(choice: Choice) -> tuple[list[dict[str, Any]], bool]:
    """Build the Label Studio result list and ``was_cancelled`` flag that stand for `choice`.

    This is what the labelling config produces in the browser; `parse_result` is its inverse.
    """
    if choice in SIDES:
        value = {"selected": choice}
        return [{"type": "pairwise", "from_name": PAIRWISE_CONTROL, "to_name": choice, "value": value}], False
    if choice == "skip":
        return [], True
    for label, verdict in VERDICT_CHOICES.items():
        if verdict == choice:
            value = {"choices": [label]}
            return [{"type": "choices", "from_name": VERDICT_CONTROL, "to_name": PROMPT_OBJECT, "value": value}], False
    raise InputError(f"invalid choice {choice!r}; expected one of {', '.join(CHOICES)}")


def parse_result(result: Any, was_cancelled: bool) -> Choice | str:
    """Reduce an annotation's result list to a Choice, or return why the labelling config cannot produce it.

    A cancelled annotation is a skip whatever its result. Otherwise the result must contain exactly one
    outcome: a pairwise side or one verdict choice. The return value is a `Choice` when valid and a
    reason (a sentence that is never a Choice) when invalid.
    """
    if was_cancelled:
        return "skip"
    if not isinstance(result, list) or not result:
        return "empty result"

    outcomes: list[Choice] = []
    for item in result:
        outcome = _parse_result_item(item)
        if outcome not in CHOICES:
            return outcome
        outcomes.append(outcome)  # type: ignore[arg-type]

    if len(outcomes) > 1:
        return f"more than one outcome ({', '.join(outcomes)})"
    return outcomes[0]


def _parse_result_item(item: Any) -> str:
    if not isinstance(item, dict):
        return f"result item {item!r} is not an object"
    control = item.get("from_name")
    value = item.get("value") if isinstance(item.get("value"), dict) else {}

    if control == PAIRWISE_CONTROL:
        selected = value.get("selected")
        if item.get("type") == "pairwise" and selected in SIDES:
            return selected
        return f"unknown pairwise selection {selected!r} (expected 'left' or 'right')"

    if control == VERDICT_CONTROL:
        choices = value.get("choices")
        if item.get("type") == "choices" and isinstance(choices, list) and len(choices) == 1:
            verdict = VERDICT_CHOICES.get(choices[0])
            if verdict is not None:
                return verdict
        return f"unknown verdict choices {choices!r} (expected ['Tie'] or ['Both bad'])"

    return f"unknown control name {control!r} (expected {PAIRWISE_CONTROL!r} or {VERDICT_CONTROL!r})"
