"""Reading the judge's verdict: ``{"covered": [numbers]}`` somewhere in a language model's reply.

Models wrap JSON in code fences, put prose around it or think aloud first, so every JSON object
in the reply is found with the bounded parser :mod:`userrl_core.bounded_json` (fenced blocks
first) and the first one with a ``covered`` key is used; what a simulator sends can never
crash the parser or stall the event loop. A reply with no such object, or whose ``covered``
is not a list of whole numbers, raises :class:`JudgeReplyError` (the environment re-asks, then
fails the turn; it never guesses).
Numbers that are not among the details shown are dropped and counted, never rewarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from userrl_core.bounded_json import json_objects

_MAX_DIGITS = 12  # a detail number written as text; longer strings are not numbers we showed


class JudgeReplyError(ValueError):
    """The judge's reply holds no usable ``{"covered": [...]}`` object."""


@dataclass(frozen=True)
class JudgeVerdict:
    """Valid covered numbers (unique, in reply order) and how many were out of range."""

    covered: list[int] = field(default_factory=list)
    out_of_range: int = 0


def _as_number(item: Any) -> int:
    if isinstance(item, bool):
        raise JudgeReplyError(f"'covered' holds a boolean ({item!r}), not a detail number")
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str) and len(item.strip()) <= _MAX_DIGITS and item.strip().lstrip("-").isdigit():
        return int(item.strip())
    raise JudgeReplyError(f"'covered' holds {_short(item)}, not a detail number")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_judge_reply(text: str, valid_numbers: set[int] | list[int]) -> JudgeVerdict:
    """Parse a judge reply against the detail numbers it was shown. Raises only
    :class:`JudgeReplyError`, whatever the reply holds."""
    valid = set(valid_numbers)
    candidates = [obj for obj in json_objects(text) if "covered" in obj]
    if not candidates:
        snippet = (text or "").strip().replace("\n", " ")[:160]
        raise JudgeReplyError(f'no JSON object with a "covered" list in the judge reply: {snippet!r}')
    raw = candidates[0]["covered"]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise JudgeReplyError(f"'covered' must be a list of detail numbers, got {_short(raw)}")
    covered: list[int] = []
    out_of_range = 0
    for item in raw:
        number = _as_number(item)
        if number not in valid:
            out_of_range += 1
        elif number not in covered:
            covered.append(number)
    return JudgeVerdict(covered=covered, out_of_range=out_of_range)
