"""Grading SearchGym answers as UserRL does: a normalised exact match first, then a judge.

``normalise`` keeps only letters and digits, lower-cased (``"James Madison."`` and
``"james madison"`` match). When they do not match and ``env.SearchGym.judge`` is ``llm``, the
simulator is asked whether the answer is correct; its reply must hold a JSON object whose
``judgment`` is ``Yes`` or ``No`` (case forgiven, nothing else). Anything else raises
:class:`JudgeReplyError`: the environment re-asks, then fails the step; it never guesses.
"""

from __future__ import annotations

from userrl_core.bounded_json import json_objects
from userrl_core.types import Message


class JudgeReplyError(ValueError):
    """The judge's reply holds no usable ``{"judgment": "Yes" | "No"}`` object."""


def normalise(answer: str) -> str:
    return "".join(ch.lower() for ch in answer if ch.isalnum())


def exact_match(answer: str, reference: str) -> bool:
    return bool(normalise(answer)) and normalise(answer) == normalise(reference)


def parse_judgment(text: str | None) -> bool:
    """True for "Yes", False for "No", from the first JSON object with a ``judgment``."""
    for obj in json_objects(text):
        if "judgment" not in obj:
            continue
        value = obj["judgment"]
        verdict = value.strip().lower() if isinstance(value, str) else None
        if verdict == "yes":
            return True
        if verdict == "no":
            return False
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise JudgeReplyError(f"'judgment' must be \"Yes\" or \"No\", got {shown}")
    raise JudgeReplyError('no JSON object with a "judgment" in the reply')


JUDGE_SYSTEM = """You check answers to quiz questions against the reference answer.

Say "Yes" when the answer names the same thing as the reference: the same person, place, date or number, possibly written differently (a full name for a surname, "1905" for "November 1905" only if the question asks for the year). Say "No" when it is wrong, incomplete for what the question asks, or hedges between several answers. Judge against the question, not by comparing letters.

Reply with one JSON object and nothing else:
{"reasoning": "one or two sentences", "judgment": "Yes" or "No"}"""

JUDGE_USER = """Question: {question}

Answer to check: {answer}

Reference answer: {reference}"""

REASK = ('That reply could not be used ({problem}). Reply again with only the JSON object '
         '{{"reasoning": "...", "judgment": "Yes" or "No"}}.')


def judge_messages(question: str, answer: str, reference: str) -> list[Message]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(question=question, answer=answer, reference=reference)}]


def reask_messages(previous: list[Message], bad_reply: str, problem: str) -> list[Message]:
    return previous + [{"role": "assistant", "content": bad_reply},
                       {"role": "user", "content": REASK.format(problem=problem)}]
