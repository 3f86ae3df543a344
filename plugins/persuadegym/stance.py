"""The persona's 7-point stance scale and the strict reader of its replies.

The persona answers each argument with a JSON object holding its public ``response`` and its
``stance`` after the argument. The stance must be one of the seven labels below, spelt out
(case and spacing are forgiven, nothing else: no "Somewhat agree", no "6", no two labels). A
reply without such an object raises :class:`StanceReplyError`; the environment then re-asks
and, when the re-asks run out, fails the step. It never guesses a stance.
"""

from __future__ import annotations

from dataclasses import dataclass

from userrl_core.bounded_json import json_objects

STANCES = (
    "Strongly Agree",
    "Agree",
    "Partly Agree",
    "Neutral",
    "Partly Disagree",
    "Disagree",
    "Strongly Disagree",
)
"""The scale from the persona's starting point (level 0) to the goal (level 6), as in UserRL."""
START, GOAL = 0, len(STANCES) - 1
_BY_KEY = {" ".join(label.lower().split()): level for level, label in enumerate(STANCES)}
MAX_RESPONSE_CHARS = 4000


class StanceReplyError(ValueError):
    """The persona's reply holds no usable ``{"response": ..., "stance": ...}`` object."""


@dataclass(frozen=True)
class PersonaReply:
    response: str
    level: int

    @property
    def stance(self) -> str:
        return STANCES[self.level]


def stance_level(label: object) -> int:
    """The level (0..6) of a stance label; :class:`StanceReplyError` for anything else."""
    if not isinstance(label, str):
        raise StanceReplyError(f"'stance' must be one of the seven labels, got {type(label).__name__}")
    key = " ".join(label.lower().split())
    if key not in _BY_KEY:
        shown = label if len(label) <= 40 else label[:37] + "..."
        raise StanceReplyError(f"'stance' {shown!r} is not one of: {', '.join(STANCES)}")
    return _BY_KEY[key]


def parse_persona_reply(text: str | None) -> PersonaReply:
    """The first JSON object in ``text`` with both ``response`` and ``stance``, validated."""
    for obj in json_objects(text):
        if "stance" not in obj or "response" not in obj:
            continue
        response = obj["response"]
        if not isinstance(response, str) or not response.strip():
            raise StanceReplyError("'response' must be a non-empty text")
        return PersonaReply(response.strip()[:MAX_RESPONSE_CHARS], stance_level(obj["stance"]))
    raise StanceReplyError('no JSON object with "response" and "stance" in the reply')


def levels_reward(previous: int, current: int) -> float:
    """UserRL's turn reward: the levels moved toward disagreement since the previous stance,
    divided by 6; 0 when the stance stays or moves back toward agreement."""
    moved = current - previous
    return round(moved / GOAL, 6) if moved > 0 else 0.0
