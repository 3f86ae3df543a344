"""Turning a sampled reply into an action: UserRL's ``interact_with_env`` tool call.

Two formats (``rollout.action_format``):

* ``tool_call``: Hermes/Qwen3 style. The first ``<tool_call>{...}</tool_call>`` of the reply
  (after thinking is removed) holds ``{"name": "interact_with_env", "arguments": {"choice":
  "action" | "search" | "answer" | "finish", "content": "..."}}``. Whitespace and Markdown code
  fences around the JSON are tolerated; ``arguments`` may also be a JSON-encoded string (OpenAI
  style). A content that repeats its own choice as a tag (``"[answer] 42"`` for ``answer``) loses
  the tag, as UserRL's tool does before the environment reads it.
* ``plain_text``: for small models without tool calling. The reply with thinking removed is
  ``Action("action", reply)``, unless it opens with one of UserRL's bracket tags
  (``[action]``, ``[search]``, ``[answer]``, ``[finish]``): then the tag is the choice and the
  rest the content (``"[answer] 42"`` is ``Action("answer", "42")``).

The choices are UserRL's tool enum (``action``, ``answer``, ``search``) plus ``finish``; what each
one does is the environment's business (an environment answers a choice it has no use for with
a message, as UserRL's gyms do).

The parser never raises on model output: every reply becomes exactly one of ``action``,
``invalid`` (a tool call that cannot be used: broken JSON, unknown tool or choice, non-text
content, oversized reply) or ``no_action`` (no tool call at all / an empty plain reply).
Replies longer than :data:`MAX_PARSE_CHARS` characters are not parsed at all (``invalid``), so
adversarial megabyte outputs cost nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from userrl_core.types import Action

TOOL_NAME = "interact_with_env"
CHOICES: tuple[str, ...] = ("action", "search", "answer", "finish")
MAX_PARSE_CHARS = 64 * 1024
"""Replies longer than this (64 KiB of characters) are rejected unparsed as ``invalid``."""

ParseKind = Literal["action", "invalid", "no_action"]

INTERACT_WITH_ENV_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Interact with the environment. The system prompt describes the environment and what "
            "each choice does."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "choice": {
                    "type": "string",
                    "enum": list(CHOICES),
                    "description": "'action' to act or ask, 'search' to search or look something up, "
                    "'answer' to give an answer, 'finish' to end.",
                },
                "content": {
                    "type": "string",
                    "description": "The text of the action or answer (may be empty for 'finish').",
                },
            },
            "required": ["choice", "content"],
        },
    },
}
"""UserRL's tool schema, passed to chat templates that render ``tools=``."""

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_CALL_OPEN, _CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ParsedReply:
    """The parser's verdict on one reply. ``action`` is set only for ``kind == "action"``;
    ``error`` explains an ``invalid`` or ``no_action`` verdict (sent back to the model)."""

    kind: ParseKind
    action: Action | None = None
    error: str | None = None


def strip_thinking(text: str) -> str:
    """Remove ``<think>...</think>`` blocks. A ``</think>`` without an opening tag (the template
    opened the block in the generation prompt) drops everything before it; an unclosed
    ``<think>`` drops everything after it. Linear time in the length of ``text``."""
    pieces: list[str] = []
    pos = 0
    while True:
        start = text.find(_THINK_OPEN, pos)
        if start < 0:
            pieces.append(text[pos:])
            break
        pieces.append(text[pos:start])
        end = text.find(_THINK_CLOSE, start + len(_THINK_OPEN))
        if end < 0:  # unclosed: the rest is thinking
            break
        pos = end + len(_THINK_CLOSE)
    kept = "".join(pieces)
    stray = kept.rfind(_THINK_CLOSE)
    if stray >= 0:
        kept = kept[stray + len(_THINK_CLOSE):]
    return kept


def parse_reply(text: str, *, action_format: Literal["tool_call", "plain_text"] = "tool_call") -> ParsedReply:
    """Classify one sampled reply (decoded, end-of-turn token excluded). Never raises."""
    if not isinstance(text, str):
        return ParsedReply("invalid", error="the reply is not text")
    if len(text) > MAX_PARSE_CHARS:
        return ParsedReply(
            "invalid", error=f"the reply is {len(text)} characters long; at most {MAX_PARSE_CHARS} are parsed"
        )
    visible = strip_thinking(text)
    if action_format == "plain_text":
        content = visible.strip()
        if not content:
            return ParsedReply("no_action", error="the reply is empty")
        tagged = _leading_tag(content)
        if tagged is not None:
            return ParsedReply("action", Action(tagged, content[len(tagged) + 2:].strip()))
        return ParsedReply("action", Action("action", content))
    return _parse_tool_call(visible)


def _leading_tag(text: str) -> str | None:
    """The choice whose ``[choice]`` tag opens ``text`` (case-insensitive), if any."""
    if not text.startswith("["):
        return None
    head = text[: max(len(c) for c in CHOICES) + 2].lower()
    for choice in CHOICES:
        if head.startswith(f"[{choice}]"):
            return choice
    return None


def _parse_tool_call(visible: str) -> ParsedReply:
    start = visible.find(_CALL_OPEN)
    if start < 0:
        return ParsedReply("no_action", error=f"no {_CALL_OPEN} in the reply")
    body_start = start + len(_CALL_OPEN)
    end = visible.find(_CALL_CLOSE, body_start)
    body = visible[body_start:] if end < 0 else visible[body_start:end]
    try:
        call = json.loads(_strip_code_fence(body.strip()))
    except (ValueError, RecursionError) as exc:
        where = "unterminated tool call" if end < 0 else "tool call"
        return ParsedReply("invalid", error=f"{where} is not valid JSON ({_short(exc)})")
    return _validate_call(call)


def _validate_call(call: Any) -> ParsedReply:
    if not isinstance(call, dict):
        return ParsedReply("invalid", error="the tool call must be a JSON object with 'name' and 'arguments'")
    name = call.get("name")
    if name != TOOL_NAME:
        return ParsedReply("invalid", error=f"unknown tool {_short(name)}; the only tool is {TOOL_NAME!r}")
    arguments = call.get("arguments", call.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as exc:
            return ParsedReply("invalid", error=f"'arguments' is not valid JSON ({_short(exc)})")
    if not isinstance(arguments, dict):
        return ParsedReply("invalid", error="'arguments' must be an object with 'choice' and 'content'")
    choice = arguments.get("choice")
    if choice not in CHOICES:
        return ParsedReply("invalid", error=f"unknown choice {_short(choice)}; use one of {', '.join(CHOICES)}")
    content = arguments.get("content", "" if choice == "finish" else None)
    if not isinstance(content, str):
        return ParsedReply("invalid", error="'content' must be a string")
    if _leading_tag(content.lstrip()) == choice:
        content = content.lstrip()[len(choice) + 2:].strip()
    return ParsedReply("action", Action(choice, content))


def _strip_code_fence(body: str) -> str:
    """Remove a Markdown code fence (with or without a language tag) around the JSON."""
    if not body.startswith("```"):
        return body
    newline = body.find("\n")
    inner = body[newline + 1:] if newline >= 0 else body[3:]
    inner = inner.rstrip()
    if inner.endswith("```"):
        inner = inner[:-3]
    return inner.strip()


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CHOICE_LIST = " | ".join(f'"{c}"' for c in CHOICES)


def error_message(parsed: ParsedReply) -> str:
    """What the model reads after an invalid tool call."""
    return (
        f"Error: {parsed.error}. Call the tool as <tool_call>{{\"name\": \"{TOOL_NAME}\", \"arguments\": "
        f"{{\"choice\": {_CHOICE_LIST}, \"content\": \"...\"}}}}</tool_call>."
    )


def reminder_message(action_format: Literal["tool_call", "plain_text"]) -> str:
    """What the model reads after a reply with no action when ``rollout.on_no_action`` is ``remind``."""
    if action_format == "plain_text":
        return "Your reply was empty. Reply with what you want to say or ask."
    return (
        f"Your reply contained no tool call. To act, call <tool_call>{{\"name\": \"{TOOL_NAME}\", "
        f"\"arguments\": {{\"choice\": {_CHOICE_LIST}, \"content\": \"...\"}}}}</tool_call>."
    )
