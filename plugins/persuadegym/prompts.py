"""What PersuadeGym asks its simulated persona. Our wording, written from the intent of UserRL's
``gyms/PersuadeGym/persuadegym/env/prompts.py``: the persona holds a statement with its own
argument, hears the persuader's latest argument with the whole conversation so far, replies in
the second person, and states where it now stands on the 7-point scale, as JSON.
"""

from __future__ import annotations

from typing import Any

from userrl_core.types import Message
from userrl_plugins.persuadegym.stance import STANCES

ENV_NAME = "PersuadeGym"

PERSONA_SYSTEM = f"""You are a person taking part in a debate about a statement you believe in. Someone is trying to change your mind.

For each of their arguments:
- think it over honestly and answer it in a natural, conversational way, speaking to them as "you" (at most about 150 words);
- be respectful but critical: point out weak reasoning or missing evidence;
- change your position only as far as the argument really deserves, which may be not at all.

Your position is always one of these seven, from full agreement to full disagreement with the statement:
{", ".join(STANCES)}."""

PERSONA_USER = """Statement you hold:
{claim}

Why you hold it:
{argument}

Your position before this argument: {stance}

Conversation so far:
{history}

The persuader's latest argument:
{latest}

Reply with one JSON object and nothing else:
{{"thought": "your private reasoning about the argument", "response": "what you say to the persuader", "stance": "one of: {labels}"}}"""

REASK = ("That reply could not be used ({problem}). Reply again with only the JSON object "
         '{{"thought": "...", "response": "...", "stance": "..."}}, where stance is exactly one of: {labels}.')


def _history(turns: list[tuple[str, str]]) -> str:
    if not turns:
        return "(none: this is the first argument)"
    return "\n\n".join(f"Turn {i}\nPersuader: {argument}\nYou: {reply}" for i, (argument, reply) in enumerate(turns, 1))


def persona_messages(claim: str, argument: str, stance: str, history: list[tuple[str, str]],
                     latest: str) -> list[Message]:
    user = PERSONA_USER.format(claim=claim, argument=argument, stance=stance, history=_history(history),
                               latest=latest, labels=", ".join(STANCES))
    return [{"role": "system", "content": PERSONA_SYSTEM}, {"role": "user", "content": user}]


def reask_messages(previous: list[Message], bad_reply: str, problem: str) -> list[Message]:
    """The persona's prompt again, with its unusable reply and a request for the exact format."""
    return previous + [
        {"role": "assistant", "content": bad_reply},
        {"role": "user", "content": REASK.format(problem=problem, labels=", ".join(STANCES))},
    ]


def opening_messages(claim: str) -> list[Message]:
    """The agent's opening when a task has no prompt of its own."""
    return [{"role": "user", "content": f"I hold this statement: {claim}\nTry to persuade me to change my position."}]


def request_context(claim: str, stance: str, latest: str, turn: int) -> dict[str, Any]:
    """The structured ``SimulatorRequest.context`` for simulators that are not language models."""
    return {"env": ENV_NAME, "claim": claim, "stance": stance, "argument": latest, "turn": turn,
            "stances": list(STANCES)}
