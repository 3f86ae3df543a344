"""IntentionGym's prompts: the agent's opening messages, the simulated user, and the judge.

Every clarifying question costs two simulator calls, made concurrently:

- ``purpose="reply"``: the user answers the question. The prompt shows the vague request, its
  category and the conversation so far and, with ``user_sees_details`` (the default, as in
  UserRL), every detail the request leaves out with the answers the user might give, so the
  user answers with a concrete value and keeps to it. The user is told never to volunteer them.
  Plain text is expected.
- ``purpose="judge"``: the judge is shown the still-missing details and answers which ones the
  question covers (``response_format="json"``), in the ``judge_format`` of the settings:
  ``userrl`` (details listed from 0; ``{"analysis", "is_task_related", "covered_detail_indices"}``)
  or ``numbered`` (details numbered from 1; ``{"covered": [numbers]}``). See
  :mod:`userrl_plugins.intentiongym.judge`.

Simulators that are not language models (the offline ``local`` simulator) read
``SimulatorRequest.context`` instead of the messages. Its shape, the same for both purposes::

    {
        "env": "IntentionGym",
        "task": str,            # the vague request
        "question": str,        # the agent's clarifying question
        "judge_format": "userrl" | "numbered",  # how the judge must answer (judge.FORMATS)
        "details": [            # only the still-missing details, in the order shown to the judge
            {"number": int,     # the label shown to the judge: from 0 (userrl) or 1 (numbered)
             "description": str, "inquiry": str, "options": [str, ...],
             "importance": 1 | 2 | 3},
            ...
        ],
        "turn": int,            # 1-based index of this question in the episode
        "seed": int,            # the episode seed, for reproducible replies
    }

A ``reply`` simulator must not reveal details it was not asked about; the ``details`` are in
the reply context so that an offline simulator can pick a plausible answer.
"""

from __future__ import annotations

from typing import Any

from userrl_core.types import Message

from userrl_plugins.intentiongym.judge import FORMATS
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

_REPLY_DETAILS_NOTE = """\
What you have in mind but left out of your request (the helper does not see this list):
{details}

When the helper asks about one of these, answer with one concrete choice (one of the examples \
or something like them) and keep to it for the rest of the conversation. Never mention a \
detail the helper did not ask about, and never show this list."""

_JUDGE_SYSTEM = """\
You judge clarifying questions. A helper is asking a user about a vague request; some details \
of the request are still unknown. Decide which of the listed unknown details the helper's \
latest question asks about, i.e. which ones its answer would reveal. A question that is off \
topic, rhetorical, or not about the user's needs covers none. Judge only the latest question.

"""

_JUDGE_ANSWER = {
    "userrl": (
        "Answer with JSON only, in exactly this form:\n"
        '{"analysis": "one or two sentences on what the question asks", '
        '"is_task_related": true or false (is the question about what the user needs for this request?), '
        '"covered_detail_indices": [indices of the unknown details the question covers, as listed]}\n'
        "Use [] when it covers none; an unrelated question covers none."
    ),
    "numbered": 'Answer with JSON only, in exactly this form: {"covered": [numbers of the covered details]}. '
                "Use [] when it covers none.",
}
_JUDGE_QUESTION = {
    "userrl": 'Which unknown details does the latest question cover? Reply with the JSON object.',
    "numbered": 'Which unknown details does the latest question cover? Reply {"covered": [...]}.',
}
_JUDGE_REASK_FORMAT = {
    "userrl": '{"analysis": "...", "is_task_related": true or false, "covered_detail_indices": [indices]}, '
              "using only the indices listed above",
    "numbered": '{"covered": [numbers]}, using only the numbers listed above',
}

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


def _details_for_user(details: list[MissingDetail]) -> str:
    lines = []
    for detail in details:
        line = f"- {detail.description}"
        if detail.options:
            line += f" (for example: {'; '.join(detail.options)})"
        lines.append(line)
    return "\n".join(lines)


def reply_system(task: IntentionTask, *, sees_details: bool = True) -> str:
    """The simulated user's system message (see :func:`reply_messages`)."""
    if not sees_details:
        return _REPLY_SYSTEM
    return _REPLY_SYSTEM + "\n\n" + _REPLY_DETAILS_NOTE.format(details=_details_for_user(list(task.missing_details)))


def reply_messages(
    task: IntentionTask, question: str, history: list[tuple[str, str]], *, sees_details: bool = True,
    system: str | None = None,
) -> list[Message]:
    """The simulated user's prompt: request, category, conversation, question and, when
    ``sees_details``, every missing detail of the task with its example answers. ``system``:
    :func:`reply_system` of the same task, when the caller keeps it (it is the same every turn)."""
    if system is None:
        system = reply_system(task, sees_details=sees_details)
    user = (
        f"Your request: {task.task}\n"
        f"Category: {task.category or 'General'}\n\n"
        f"Conversation so far:\n{_history_text(history, helper='Helper', user='You')}\n\n"
        f"The helper now asks: {question}\n\n"
        "Your answer:"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def labelled_details(details: list[MissingDetail], judge_format: str) -> list[tuple[int, MissingDetail]]:
    """The still-missing details with the labels the judge will see (from 0 for ``userrl``,
    from 1 for ``numbered``)."""
    return list(enumerate(details, start=FORMATS[judge_format].first_label))


def judge_detail_text(detail: MissingDetail) -> str:
    """One unknown detail as the judge sees it, after its label."""
    text = f"{detail.description} (importance: {_IMPORTANCE_LABEL[detail.importance]})"
    if detail.inquiry:
        text += f"\n   a question that would cover it: {detail.inquiry}"
    return text


def judge_messages(
    task: IntentionTask,
    question: str,
    history: list[tuple[str, str]],
    details: list[tuple[int, MissingDetail]],
    judge_format: str,
    *,
    detail_texts: dict[int, str] | None = None,
) -> list[Message]:
    """The judge's prompt: the request, the labelled still-missing details, the question.
    ``detail_texts``: :func:`judge_detail_text` of each detail by ``id(detail)``, when the
    caller keeps them (they are the same every turn)."""
    lines = [f"{label}. " + (detail_texts[id(detail)] if detail_texts is not None else judge_detail_text(detail))
             for label, detail in details]
    user = (
        f"Request: {task.task}\n"
        f"Category: {task.category or 'General'}\n\n"
        "Unknown details:\n" + ("\n".join(lines) or "(none)") + "\n\n"
        f"Earlier conversation:\n{_history_text(history, helper='Helper', user='User')}\n\n"
        f"Latest question: {question}\n\n"
        + _JUDGE_QUESTION[judge_format]
    )
    system = _JUDGE_SYSTEM + _JUDGE_ANSWER[judge_format]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_reask_messages(previous: list[Message], bad_reply: str, problem: str, judge_format: str) -> list[Message]:
    """The judge's prompt again, with its unusable reply and a request for the exact format."""
    return previous + [
        {"role": "assistant", "content": bad_reply},
        {
            "role": "user",
            "content": f"That reply could not be used ({problem}). Answer again with JSON only, "
            f"exactly {_JUDGE_REASK_FORMAT[judge_format]}.",
        },
    ]


def request_context(
    task: IntentionTask,
    question: str,
    details: list[tuple[int, MissingDetail]],
    *,
    judge_format: str,
    turn: int,
    seed: int,
) -> dict[str, Any]:
    """The structured ``SimulatorRequest.context`` (shape in this module's docstring)."""
    return {
        "env": ENV_NAME,
        "task": task.task,
        "question": question,
        "judge_format": judge_format,
        "details": [
            {
                "number": label,
                "description": d.description,
                "inquiry": d.inquiry,
                "options": list(d.options),
                "importance": d.importance,
            }
            for label, d in details
        ],
        "turn": turn,
        "seed": seed,
    }


def with_reward(observation: str, reward: float) -> str:
    """The observation as UserRL's ``interact_with_env`` tool returns it: the reply, a newline,
    ``Reward: `` and the reward as Python prints a float (``1.0``, ``0.49999999999999994``)."""
    return f"{observation}\nReward: {float(reward)}"
