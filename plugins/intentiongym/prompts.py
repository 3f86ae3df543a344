"""IntentionGym's prompts: the agent's opening messages, the simulated user, and the judge.

Every clarifying question costs two simulator calls, made concurrently:

- ``purpose="reply"``: the user answers the question. The prompt shows the vague request, its
  category and the conversation so far, but **never the missing details**, so the agent cannot
  read them off the user's reply. Plain text is expected.
- ``purpose="judge"``: the judge is shown the still-missing details, numbered from 1, and
  answers ``{"covered": [numbers]}`` (``response_format="json"``).

Simulators that are not language models (the offline ``local`` simulator) read
``SimulatorRequest.context`` instead of the messages. Its shape, the same for both purposes::

    {
        "env": "IntentionGym",
        "task": str,            # the vague request
        "question": str,        # the agent's clarifying question
        "details": [            # only the still-missing details, in the order shown to the judge
            {"number": int,     # 1-based; the judge answers with these numbers
             "description": str, "inquiry": str, "options": [str, ...],
             "importance": 1 | 2 | 3},
            ...
        ],
        "turn": int,            # 1-based index of this question in the episode
        "seed": int,            # the episode seed, for reproducible replies
    }

A ``reply`` simulator must not reveal details it was not asked about; the ``details`` are in
the reply context only so that an offline simulator can pick a plausible answer.
"""

from __future__ import annotations

import json
from typing import Any

from userrl_core.types import Message

from userrl_plugins.intentiongym.tasks import IntentionTask, MissingDetail

ENV_NAME = "IntentionGym"

AGENT_SYSTEM_PROMPT = """\
You are helping a user whose request is vague. Before anyone can act on it, the details the \
user left out have to be found, and the only way to find them is to ask.

Call the tool `interact_with_env` once per turn with a `choice` and a `content`:
- `action`: `content` is one clarifying question for the user. Ask about one missing detail at \
a time; questions that bundle several details earn less.
- `finish`: end the conversation when you believe nothing important is still missing.

Think briefly between <think> and </think> before each tool call. Your turns are limited, so ask \
about the details that matter most first."""

_REPLY_SYSTEM = """\
You play a person who asked for help with a vague request and is now answering questions \
from a helper. Stay in character: answer as that person would, in one to three natural \
sentences, in plain text (no JSON, no lists of options).
- If the question asks about your wishes or circumstances for this request, give a concrete, \
realistic, consistent answer.
- If it does not, say so politely and steer back to your request.
- Only answer what you are asked. Do not volunteer other details, do not list what else \
might matter, and do not solve the task yourself: you are the one who needs help."""

_JUDGE_SYSTEM = """\
You judge clarifying questions. A helper is asking a user about a vague request; some details \
of the request are still unknown. Decide which of the listed unknown details the helper's \
latest question asks about, i.e. which ones its answer would reveal. A question that is off \
topic, rhetorical, or not about the user's needs covers none. Judge only the latest question.

Answer with JSON only, in exactly this form: {"covered": [numbers of the covered details]}. \
Use [] when it covers none."""

_IMPORTANCE_LABEL = {3: "high", 2: "medium", 1: "low"}


def opening_messages(task: IntentionTask) -> list[Message]:
    """The agent's first messages for a task given without a prompt (plain JSON task lists)."""
    user = (
        f"Category: {task.category or 'General'}\n"
        f"My request: {task.task}\n"
        "Ask me about whatever you need to know before you can help."
    )
    return [{"role": "system", "content": AGENT_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _history_text(history: list[tuple[str, str]], *, helper: str, user: str) -> str:
    if not history:
        return "(no earlier questions)"
    return "\n".join(f"{helper}: {q}\n{user}: {a}" for q, a in history)


def reply_messages(task: IntentionTask, question: str, history: list[tuple[str, str]]) -> list[Message]:
    """The simulated user's prompt: request, category, conversation, question. No details."""
    user = (
        f"Your request: {task.task}\n"
        f"Category: {task.category or 'General'}\n\n"
        f"Conversation so far:\n{_history_text(history, helper='Helper', user='You')}\n\n"
        f"The helper now asks: {question}\n\n"
        "Your answer:"
    )
    return [{"role": "system", "content": _REPLY_SYSTEM}, {"role": "user", "content": user}]


def numbered_details(details: list[MissingDetail]) -> list[tuple[int, MissingDetail]]:
    """The still-missing details with the 1-based numbers the judge will see."""
    return list(enumerate(details, start=1))


def judge_messages(
    task: IntentionTask,
    question: str,
    history: list[tuple[str, str]],
    details: list[tuple[int, MissingDetail]],
) -> list[Message]:
    """The judge's prompt: the request, the numbered still-missing details, the question."""
    lines = []
    for number, detail in details:
        line = f"{number}. {detail.description} (importance: {_IMPORTANCE_LABEL[detail.importance]})"
        if detail.inquiry:
            line += f"\n   a question that would cover it: {detail.inquiry}"
        lines.append(line)
    user = (
        f"Request: {task.task}\n"
        f"Category: {task.category or 'General'}\n\n"
        "Unknown details:\n" + "\n".join(lines) + "\n\n"
        f"Earlier conversation:\n{_history_text(history, helper='Helper', user='User')}\n\n"
        f"Latest question: {question}\n\n"
        'Which unknown details does the latest question cover? Reply {"covered": [...]}.'
    )
    return [{"role": "system", "content": _JUDGE_SYSTEM}, {"role": "user", "content": user}]


def judge_reask_messages(previous: list[Message], bad_reply: str, problem: str) -> list[Message]:
    """The judge's prompt again, with its unusable reply and a request for the exact format."""
    return previous + [
        {"role": "assistant", "content": bad_reply},
        {
            "role": "user",
            "content": f"That reply could not be used ({problem}). Answer again with JSON only, "
            'exactly {"covered": [numbers]}, using only the numbers listed above.',
        },
    ]


def request_context(
    task: IntentionTask,
    question: str,
    details: list[tuple[int, MissingDetail]],
    *,
    turn: int,
    seed: int,
) -> dict[str, Any]:
    """The structured ``SimulatorRequest.context`` (shape in this module's docstring)."""
    return {
        "env": ENV_NAME,
        "task": task.task,
        "question": question,
        "details": [
            {
                "number": number,
                "description": d.description,
                "inquiry": d.inquiry,
                "options": list(d.options),
                "importance": d.importance,
            }
            for number, d in details
        ],
        "turn": turn,
        "seed": seed,
    }


def verdict_json(numbers: list[int]) -> str:
    """A judge answer in the expected format, for simulators that decide without a language model."""
    return json.dumps({"covered": numbers})
