"""Finding JSON objects in a model's free-text reply, with bounded cost, for every environment.

Simulators and judges are language models: their JSON comes wrapped in code fences, prose or
thinking, and nothing stops one from sending megabytes of braces, nesting thousands deep or an
integer of 10,000 digits. :func:`json_objects` is the one parser environments use for such
replies. Its promises:

* **Bounded input.** Only the first ``limits.max_chars`` characters are read.
* **Linear time.** One pass marks the balanced ``{...}`` spans (braces inside JSON strings do
  not count); only spans no deeper than ``limits.max_depth`` are decoded, so each character is
  decoded at most ``max_depth`` times. The worst 32 KiB reply measured here (alternating
  ``{}``, braces only, quotes only) costs well under 0.2 s; a well-formed reply microseconds.
* **Never raises on content.** Broken, too deep or too large values (Python refuses integers
  over 4,300 digits with ``ValueError``) are skipped, never propagated; ``RecursionError``
  cannot happen because nothing deeper than ``max_depth`` reaches the decoder.
* **A short cut for the usual reply.** A reply that is one JSON object and nothing else (no
  fence, at most ``max_depth`` opening braces and brackets, so no deeper) is decoded at once,
  without the scan: the scan would find that object first and everything else inside it
  (about 3 us instead of 30 us, for every judge call of a rollout).

Environments turn "no usable object" into their own error and go through their re-ask-then-
fail path (docs/environments.md); they never guess a verdict.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Any

_FENCE = "```"


@dataclass(frozen=True)
class ReplyLimits:
    """How much of a reply is read (characters), how deep a JSON value may nest, and how many
    objects are returned at most."""

    max_chars: int = 32 * 1024
    max_depth: int = 32
    max_objects: int = 64


DEFAULT_LIMITS = ReplyLimits()


def json_objects(text: str | None, limits: ReplyLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """The JSON objects (``dict``) found in ``text``: those inside ``` fences first, then the
    rest, each in reading order; an object nested in one already returned is not repeated.
    Returns ``[]`` when there is none; never raises on the content of ``text``."""
    text = (text or "")[: limits.max_chars]
    whole = _whole_object(text, limits)
    return [whole] if whole is not None else _json_objects_scanned(text, limits)


def _json_objects_scanned(text: str, limits: ReplyLimits) -> list[dict[str, Any]]:
    """:func:`json_objects` by the scan alone (``text`` already cut to ``max_chars``)."""
    spans = _balanced_spans(text, limits.max_depth)
    fences = _fenced_ranges(text)
    fence_starts = [a for a, _ in fences]

    def in_fence(span: tuple[int, int]) -> bool:
        i = bisect.bisect_right(fence_starts, span[0]) - 1
        return i >= 0 and span[1] <= fences[i][1]

    ordered = sorted(spans, key=lambda s: (not in_fence(s), s[0]))
    found: list[dict[str, Any]] = []
    taken: list[tuple[int, int]] = []
    for start, end in ordered:
        if len(found) >= limits.max_objects:
            break
        if any(a <= start and end <= b for a, b in taken):
            continue  # part of an object already returned
        value = _decode(text[start:end])
        if isinstance(value, dict):
            found.append(value)
            taken.append((start, end))
    return found


def _whole_object(text: str, limits: ReplyLimits) -> dict[str, Any] | None:
    """The object ``text`` is, when it is exactly one JSON object that the scan would return
    first and alone (module doc); None when that is not certain, and the scan decides."""
    body = text.strip()
    if (not body.startswith("{") or not body.endswith("}") or limits.max_objects < 1 or _FENCE in body
            or body.count("{") + body.count("[") > limits.max_depth):
        return None
    value = _decode(body)
    return value if isinstance(value, dict) else None


def first_object_with(text: str | None, key: str, limits: ReplyLimits = DEFAULT_LIMITS) -> dict[str, Any] | None:
    """The first object of :func:`json_objects` that has ``key``, or ``None``."""
    return next((obj for obj in json_objects(text, limits) if key in obj), None)


def _decode(piece: str) -> Any:
    try:
        return json.loads(piece)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so is a huge int
        return None


_RESTARTS = 4
"""Re-scans after a stray quote swallowed the rest of the text: bounded, so the whole scan
stays linear."""

_TOKEN = re.compile(r'\\.|["{}\[\]]', re.DOTALL)
"""The characters that matter to the scan: escape pairs, quotes, braces, brackets."""


def _balanced_spans(text: str, max_depth: int) -> list[tuple[int, int]]:
    """``(start, end)`` of every balanced ``{...}`` whose nesting (braces and brackets) stays
    within ``max_depth``, unsorted. String state is tracked only inside a brace, so quotes in
    the surrounding prose do not matter; when a stray quote inside a brace leaves the text
    ending in a string, the scan restarts after that object's ``{`` (a few times at most)."""
    spans: list[tuple[int, int]] = []
    begin = 0
    for _ in range(_RESTARTS + 1):
        restart = _scan(text, begin, max_depth, spans)
        if restart is None:
            break
        begin = restart + 1
    return spans


def _scan(text: str, begin: int, max_depth: int, spans: list[tuple[int, int]]) -> int | None:
    """One pass from ``begin``; appends spans. Returns the start of the outermost open object
    when the text ended inside a string, else ``None``."""
    stack: list[tuple[str, int]] = []  # (opening char, position)
    poisoned = 0  # the lowest `poisoned` levels of the stack enclose something too deep
    in_string = False
    for match in _TOKEN.finditer(text, begin):
        char = match.group()
        if len(char) == 2:  # an escape pair: only meaningful inside a string, skipped anyway
            continue
        if in_string:
            in_string = char != '"'
            continue
        pos = match.start()
        if char == '"':
            in_string = bool(stack)
        elif char == "{" or (char == "[" and stack):  # a top-level array is looked into, not kept
            stack.append((char, pos))
            if len(stack) > max_depth:
                poisoned = len(stack)
        else:  # a closing brace or bracket
            opener = "{" if char == "}" else "["
            if not stack or stack[-1][0] != opener:
                stack.clear()  # unbalanced: start afresh after it
                poisoned = 0
                continue
            level = len(stack)
            _, start = stack.pop()
            if level <= poisoned:
                poisoned = len(stack)
            elif opener == "{":
                spans.append((start, pos + 1))
    return stack[0][1] if stack and in_string else None


def _fenced_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges between pairs of ``` markers (linear scan)."""
    ranges: list[tuple[int, int]] = []
    pos = 0
    while True:
        opening = text.find(_FENCE, pos)
        if opening == -1:
            return ranges
        closing = text.find(_FENCE, opening + len(_FENCE))
        if closing == -1:
            return ranges
        ranges.append((opening + len(_FENCE), closing))
        pos = closing + len(_FENCE)
