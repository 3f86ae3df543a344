"""What TurtleGym asks the simulator. Written for this project from UserRL's intent
(``gyms/TurtleGym/turtlegym/env/prompts.py``): the host answers a question with Yes, No or
Maybe against the hidden story; the grader scores every evaluation point of an answer 0, 0.5
or 1 (weights are never shown to it, as in UserRL).

Two grading protocols (``env.TurtleGym.grading``): ``joint`` asks once for all points, as
UserRL does; ``per_criterion`` asks once per point (concurrently) for a single number, which
small models follow far more often."""

from __future__ import annotations

from userrl_core.types import Message

from .stories import Story

_STORY = "The player sees this puzzle (the surface):\n{surface}\n\nWhat really happened (the hidden truth):\n{bottom}"

HOST_SYSTEM = (
    "You host a lateral-thinking story puzzle. " + _STORY + "\n\n"
    "The player asks yes/no questions to uncover the hidden truth. Answer Yes if the question agrees with "
    "the hidden truth, No if it contradicts it or is far from it, and Maybe only when the story does not "
    "settle it (use Maybe rarely). Never explain.\n"
    "Reply with exactly one word: Yes, No or Maybe."
)

JOINT_GRADER_SYSTEM = (
    "You grade answers to a lateral-thinking story puzzle. " + _STORY + "\n\n"
    "The player now explains the whole story. For each numbered evaluation point below, decide whether the "
    "explanation covers it: 1 = fully, 0.5 = partly, 0 = not at all.\n\nEvaluation points:\n{points}\n\n"
    'Reply with JSON only: {{"scores": [one number per point, in order]}}, exactly {count} numbers.'
)

POINT_GRADER_SYSTEM = (
    "You grade answers to a lateral-thinking story puzzle. " + _STORY + "\n\n"
    "Evaluation point: {statement}\n\n"
    "Does the player's explanation cover this point? Reply with one number only: "
    "1 (fully), 0.5 (partly) or 0 (not at all)."
)


def question_messages(story: Story, question: str) -> list[Message]:
    return [
        {"role": "system", "content": HOST_SYSTEM.format(surface=story.surface, bottom=story.bottom)},
        {"role": "user", "content": f"Question: {question}"},
    ]


def joint_grader_messages(story: Story, answer: str) -> list[Message]:
    points = "\n".join(f"{i}. {c.statement}" for i, c in enumerate(story.criteria, 1))
    system = JOINT_GRADER_SYSTEM.format(surface=story.surface, bottom=story.bottom, points=points,
                                        count=len(story.criteria))
    return [{"role": "system", "content": system}, {"role": "user", "content": f"The player's explanation: {answer}"}]


def point_grader_messages(story: Story, index: int, answer: str) -> list[Message]:
    system = POINT_GRADER_SYSTEM.format(surface=story.surface, bottom=story.bottom,
                                        statement=story.criteria[index].statement)
    return [{"role": "system", "content": system}, {"role": "user", "content": f"The player's explanation: {answer}"}]


def joint_instruction(count: int) -> str:
    return f'Answer again with JSON only: {{"scores": [...]}} holding exactly {count} numbers, each 0, 0.5 or 1.'


POINT_INSTRUCTION = "Answer again with one number only: 1, 0.5 or 0."


def feedback(story: Story, grades: list[float]) -> str:
    """What the player reads after an answer: the points it fully covers (as UserRL reveals them),
    never the hidden truth or the points still missing."""
    covered = [c.statement for c, g in zip(story.criteria, grades) if g == 1.0]
    if not covered:
        return "Your explanation does not fully cover any of the key points yet. Keep asking questions."
    lines = "\n".join(f"- {s}" for s in covered)
    return (
        f"Your explanation fully covers these key points:\n{lines}\n"
        "The story may hold more hidden twists: ask more questions and answer again."
    )
