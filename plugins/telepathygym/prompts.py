"""What TelepathyGym asks the simulator. Written for this project from UserRL's intent
(``gyms/TelepathyGym/telepathygym/env/prompts.py``): the user answers a question about the
entity it thinks of with Yes, No or Maybe; the grader says whether a guess names that entity,
with no partial credit. Both prompts ask for one word (optionally a JSON object), so that a
small model can follow them and the strict parsers can read them."""

from __future__ import annotations

from userrl_core.types import Message

from .entities import Entity

USER_SYSTEM = (
    "You are thinking of this entity: {entity}\n"
    "The player asks yes/no questions about it. Answer truthfully: Yes if it is true of the entity, No if "
    "it is false, Maybe only if it cannot be decided. Reply with exactly one word: Yes, No or Maybe."
)

GRADER_SYSTEM = (
    "You are the judge of a guessing game. The secret entity is:\n{entity}\n\n"
    "Decide whether the player's guess names this entity, or an obviously equivalent name for it. "
    "A guess that is only close, related or partly right is wrong: there is no partial credit.\n"
    "Reply with exactly one word: Yes if the guess is correct, No otherwise."
)


def question_messages(entity: Entity, question: str) -> list[Message]:
    return [
        {"role": "system", "content": USER_SYSTEM.format(entity=entity.target_entity)},
        {"role": "user", "content": f"Question: {question}"},
    ]


def grader_messages(entity: Entity, guess: str) -> list[Message]:
    return [
        {"role": "system", "content": GRADER_SYSTEM.format(entity=entity.target_entity)},
        {"role": "user", "content": f"The player's guess: {guess}"},
    ]


GRADER_INSTRUCTION = 'Answer again with exactly one word: Yes or No (or JSON {"judgment": "Yes"}).'
CORRECT = "Yes! You guessed it: that is what I was thinking of."
WRONG = "No, that is not what I am thinking of. Ask more questions or guess again."
