"""Reading the judge's verdict out of a language model's reply, in one of two formats.

``judge_format: userrl`` (the default, UserRL's protocol): the details are listed from 0 and the
judge answers ``{"analysis": str, "is_task_related": bool, "covered_detail_indices": [int]}``.
``is_task_related: false`` means the question covers nothing, whatever indices it lists; a
missing ``is_task_related`` counts as true (UserRL's default).

``judge_format: numbered`` (userrl's earlier protocol): the details are numbered from 1 and the
judge answers ``{"covered": [int]}``.

Models wrap JSON in code fences, put prose around it or think aloud first, so every JSON object
in the reply is found with the bounded parser :mod:`userrl_core.bounded_json` (fenced blocks
first) and the first one with the format's list key is used; what a simulator sends can never
crash the parser or stall the event loop. The parser is strict where UserRL's guesses (UserRL
reads an unusable reply as "covers nothing"): a reply with no such object, a list key that is
not a list, an entry that is not a whole number, or an ``is_task_related`` that is not a JSON
boolean raises :class:`JudgeReplyError`, and the environment re-asks, then fails the turn.

Entries that are not among the labels shown (negative, too large) are ignored and counted,
never rewarded. Repeated entries are kept (``duplicates="count"``, UserRL: each repeat counts
as one more covered detail and costs ``multi_detail_penalty``) or dropped
(``duplicates="ignore"``); either way they are counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from userrl_core.bounded_json import json_objects

JudgeFormat = Literal["userrl", "numbered"]
Duplicates = Literal["count", "ignore"]


@dataclass(frozen=True)
class FormatSpec:
    """What a judge format looks like: the key of the covered list and the first label."""

    list_key: str
    first_label: int
    has_task_related: bool


FORMATS: dict[str, FormatSpec] = {
    "userrl": FormatSpec(list_key="covered_detail_indices", first_label=0, has_task_related=True),
    "numbered": FormatSpec(list_key="covered", first_label=1, has_task_related=False),
}

_WHOLE_NUMBER_TEXT = re.compile(r"\s*-?[0-9]{1,12}\s*")  # ASCII digits only; longer is not a label we showed


class JudgeReplyError(ValueError):
    """The judge's reply holds no usable verdict in the expected format."""


@dataclass(frozen=True)
class JudgeVerdict:
    """The labels judged covered (in reply order; repeats kept when duplicates count) and what
    was ignored: entries outside the labels shown, repeated entries, and whether the judge
    called the question unrelated to the task."""

    covered: list[int] = field(default_factory=list)
    out_of_range: int = 0
    duplicates: int = 0
    task_related: bool = True


def _as_label(item: Any, key: str) -> int:
    if isinstance(item, bool):
        raise JudgeReplyError(f"'{key}' holds a boolean ({item!r}), not a detail index")
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str) and _WHOLE_NUMBER_TEXT.fullmatch(item):
        return int(item)
    raise JudgeReplyError(f"'{key}' holds {_short(item)}, not a detail index")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_judge_reply(
    text: str | None,
    labels: set[int] | list[int],
    *,
    judge_format: JudgeFormat = "userrl",
    duplicates: Duplicates = "count",
) -> JudgeVerdict:
    """Parse a judge reply against the detail labels it was shown. Raises only
    :class:`JudgeReplyError`, whatever the reply holds."""
    spec = FORMATS[judge_format]
    key = spec.list_key
    shown = set(labels)
    candidates = [obj for obj in json_objects(text) if key in obj]
    if not candidates:
        snippet = (text or "").strip().replace("\n", " ")[:160]
        raise JudgeReplyError(f'no JSON object with a "{key}" list in the judge reply: {snippet!r}')
    verdict = candidates[0]
    raw = verdict[key]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise JudgeReplyError(f"'{key}' must be a list of detail indices, got {_short(raw)}")
    task_related = verdict.get("is_task_related", True) if spec.has_task_related else True
    if not isinstance(task_related, bool):
        raise JudgeReplyError(f"'is_task_related' must be true or false, got {_short(task_related)}")
    entries = [_as_label(item, key) for item in raw]
    if not task_related:
        return JudgeVerdict(task_related=False)
    covered: list[int] = []
    out_of_range = repeated = 0
    for label in entries:
        if label not in shown:
            out_of_range += 1
            continue
        if label in covered:
            repeated += 1
            if duplicates == "ignore":
                continue
        covered.append(label)
    return JudgeVerdict(covered=covered, out_of_range=out_of_range, duplicates=repeated)
