"""What the core checks of what an environment hands back, and the one rule for its opening.

Shared by the rollout engine (training, validation, ``userrl eval``) and ``userrl simulate``,
so an environment behaves the same when it is played by hand and when it is trained on:

- :func:`opening_messages`: the recipe's ``rollout.system_prompt``, when given, replaces the
  system message of the opening ``reset()`` returns (or is put in front when there is none);
  everything else the environment wrote, its own opening user message included, is kept.
- :func:`chat_messages`: ``reset()`` must return a non-empty list of ``{"role", "content"}``
  mappings of text.
- :func:`finite_reward`: a turn reward is a finite int or float (not a bool, not text, not
  None, NaN or infinity).

A value that fails a check is an environment error, reported with the environment and the task.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from userrl_core.types import Message


def opening_messages(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """``messages`` (copied) with ``system_prompt`` as their one system message, when given."""
    copied = [dict(m) for m in messages]
    if system_prompt is None:
        return copied
    rest = [m for m in copied if m.get("role") != "system"]
    return [{"role": "system", "content": system_prompt}, *rest]


def chat_messages(value: Any) -> list[Message] | None:
    """A copy of ``value`` when it is a non-empty list of ``{"role": str, "content": str}``
    mappings; None otherwise."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    out = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return None
        out.append(dict(message))
    return out


def finite_reward(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (int, float, numpy scalar; not a
    bool, not text); otherwise None."""
    if type(value) is float:  # the usual case, without the slower abstract-class check
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def bad_reward(value: Any) -> str:
    """What is wrong with a reward :func:`finite_reward` refused."""
    return f"returned reward {value!r} ({type(value).__name__}); a turn reward is a finite int or float"
