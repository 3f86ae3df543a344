"""Reading the judge's verdict: ``{"covered": [numbers]}`` somewhere in a language model's reply.

Models wrap JSON in code fences, put prose around it or think aloud first, so every JSON object
in the reply is tried in order and the first one with a ``covered`` key is used. A reply with no
such object, or whose ``covered`` is not a list of whole numbers, raises
:class:`JudgeReplyError` (the environment re-asks, then fails the turn; it never guesses).
Numbers that are not among the details shown are dropped and counted, never rewarded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class JudgeReplyError(ValueError):
    """The judge's reply holds no usable ``{"covered": [...]}`` object."""


@dataclass(frozen=True)
class JudgeVerdict:
    """Valid covered numbers (unique, in reply order) and how many were out of range."""

    covered: list[int] = field(default_factory=list)
    out_of_range: int = 0


def _json_objects(text: str) -> list[Any]:
    """Every JSON value that starts at a ``{`` in ``text`` (fenced blocks first)."""
    decoder = json.JSONDecoder()
    pieces = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    found: list[Any] = []
    for piece in pieces:
        start = piece.find("{")
        while start != -1:
            try:
                value, end = decoder.raw_decode(piece, start)
            except json.JSONDecodeError:
                start = piece.find("{", start + 1)
                continue
            found.append(value)
            start = piece.find("{", end)
    return found


def _as_number(item: Any) -> int:
    if isinstance(item, bool):
        raise JudgeReplyError(f"'covered' holds a boolean ({item!r}), not a detail number")
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str) and item.strip().lstrip("-").isdigit():
        return int(item.strip())
    raise JudgeReplyError(f"'covered' holds {item!r}, not a detail number")


def parse_judge_reply(text: str, valid_numbers: set[int] | list[int]) -> JudgeVerdict:
    """Parse a judge reply against the detail numbers it was shown."""
    valid = set(valid_numbers)
    candidates = [obj for obj in _json_objects(text or "") if isinstance(obj, dict) and "covered" in obj]
    if not candidates:
        snippet = (text or "").strip().replace("\n", " ")[:160]
        raise JudgeReplyError(f'no JSON object with a "covered" list in the judge reply: {snippet!r}')
    raw = candidates[0]["covered"]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise JudgeReplyError(f"'covered' must be a list of detail numbers, got {raw!r}")
    covered: list[int] = []
    out_of_range = 0
    for item in raw:
        number = _as_number(item)
        if number not in valid:
            out_of_range += 1
        elif number not in covered:
            covered.append(number)
    return JudgeVerdict(covered=covered, out_of_range=out_of_range)
