"""Asking a simulator for a reply the environment must parse: strict parsers, re-ask, then fail.

Every simulator reply that an environment turns into a reward or a verdict (Yes/No/Maybe, a
grade, a stance) goes through one rule: a parser that accepts only an unambiguous reply and
raises :class:`ReplyFormatError` otherwise; the environment re-asks (the same prompt, the
unusable reply and a note saying what was wrong) up to ``retries`` times, and then the step
fails (:class:`UnusableReply`), exactly like a simulator call that failed: no reward, the
episode is counted as failed. Nothing here ever guesses a verdict.

:func:`ask_strictly` is the loop; :func:`parse_choice` and :func:`parse_grade` are the strict
parsers that the built-in question games share (third-party environments may use them too).
JSON inside replies is found with :mod:`userrl_core.bounded_json` (bounded cost, never raises).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from userrl_core.bounded_json import first_object_with
from userrl_core.types import Message, Simulator, SimulatorRequest

T = TypeVar("T")


class ReplyFormatError(ValueError):
    """A simulator reply the parser cannot use; the message says why (shown on a re-ask)."""


class UnusableReply(Exception):
    """Every attempt gave an unusable reply: the step fails (no reward)."""

    def __init__(self, what: str, attempts: int, problem: str):
        super().__init__(f"{what}: no usable reply after {attempts} attempt(s): {problem}")
        self.attempts = attempts
        self.problem = problem


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A parsed reply: the value, the calls it took (1 + re-asks) and the raw text used."""

    value: T
    calls: int
    text: str

    @property
    def reasks(self) -> int:
        return self.calls - 1


def reask_messages(previous: list[Message], bad_reply: str, problem: str, instruction: str) -> list[Message]:
    """The prompt again with the unusable reply and a request for the exact format."""
    return previous + [
        {"role": "assistant", "content": bad_reply},
        {"role": "user", "content": f"That reply could not be used ({problem}). {instruction}"},
    ]


async def ask_strictly(
    simulator: Simulator,
    request: SimulatorRequest,
    parse: Callable[[str], T],
    *,
    retries: int,
    instruction: str,
    what: str = "simulator reply",
) -> Parsed[T]:
    """Ask ``simulator`` and parse its reply with ``parse``; re-ask ``retries`` times on a
    :class:`ReplyFormatError`, appending ``instruction`` (what to answer, exactly), then raise
    :class:`UnusableReply`. A :class:`~userrl_core.types.SimulatorError` propagates unchanged."""
    problem = ""
    for attempt in range(retries + 1):
        response = await simulator.complete(request)
        try:
            return Parsed(parse(response.text), attempt + 1, response.text)
        except ReplyFormatError as exc:
            problem = str(exc)
            request = SimulatorRequest(
                purpose=request.purpose,
                messages=reask_messages(request.messages, response.text, problem, instruction),
                context=request.context,
                response_format=request.response_format,
            )
    raise UnusableReply(what, retries + 1, problem)


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join((text or "").split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def parse_choice(text: str, choices: Sequence[str], *, key: str) -> str:
    """One of ``choices`` (words such as Yes / No / Maybe), read strictly from a reply.

    * A JSON object in the reply with ``key`` decides: its value must be a string that is one
      of the choices (case, surrounding spaces and a final ``.``/``!`` ignored).
    * Otherwise the reply must name exactly one of the choices as a whole word
      (case-insensitive), as often as it likes: ``"No, it is not."`` is No; ``"Maybe yes"`` names
      two and is unusable; so is a reply that names none.

    Returns the choice as spelled in ``choices``; raises :class:`ReplyFormatError` otherwise.
    """
    by_fold = {c.casefold(): c for c in choices}
    listed = " / ".join(choices)
    obj = first_object_with(text, key)
    if obj is not None:
        value = obj[key]
        if isinstance(value, str) and value.strip().rstrip(".!").strip().casefold() in by_fold:
            return by_fold[value.strip().rstrip(".!").strip().casefold()]
        raise ReplyFormatError(f'"{key}" must be one of {listed}, got {_snippet(str(value), 60)}')
    pattern = r"\b(" + "|".join(re.escape(c) for c in choices) + r")\b"
    found = {m.group(1).casefold() for m in re.finditer(pattern, text or "", flags=re.IGNORECASE)}
    if len(found) == 1:
        return by_fold[found.pop()]
    if not found:
        raise ReplyFormatError(f"the reply names none of {listed}: {_snippet(text)}")
    named = " and ".join(by_fold[f] for f in sorted(found))
    raise ReplyFormatError(f"the reply names {named}; it must name exactly one of {listed}")


_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?!\w|\.\d)")


def grade_value(value: object, allowed: Sequence[float]) -> float:
    """``value`` (a number, or a string holding only a number) if it is one of ``allowed``."""
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value.strip())
    if number is None or number not in allowed:
        shown = ", ".join(f"{a:g}" for a in allowed)
        raise ReplyFormatError(f"a grade must be one of {shown}, got {_snippet(str(value), 40)}")
    return number


def parse_grade(text: str, allowed: Sequence[float], *, key: str) -> float:
    """One grade out of ``allowed`` (e.g. 0, 0.5, 1), read strictly from a reply.

    A JSON object with ``key`` decides (its value must be an allowed number); otherwise the
    reply must contain exactly one number, and it must be allowed (``"Score: 0.5"`` is 0.5;
    ``"criterion 2: 1"`` holds two numbers and is unusable).
    """
    obj = first_object_with(text, key)
    if obj is not None:
        return grade_value(obj[key], allowed)
    numbers = _NUMBER.findall(text or "")
    if len(numbers) != 1:
        shown = ", ".join(f"{a:g}" for a in allowed)
        raise ReplyFormatError(
            f"the reply must hold exactly one grade ({shown}); it holds {len(numbers)} number(s): {_snippet(text)}"
        )
    return grade_value(numbers[0], allowed)
