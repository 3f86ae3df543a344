"""The TelepathyGym environment: find the entity the simulated user thinks of.

UserRL's semantics (``gyms/TelepathyGym/telepathygym/env/telepathy_env.py``), so scores compare:
a question (``action``, or ``search`` as UserRL reads it) gets Yes / No / Maybe and reward 0; a
guess (``answer``) is graded correct (1) or wrong (0) by the simulator, with no partial credit,
and rewarded ``max(0, score - best earlier score)``: 1 for the first correct guess, 0 for every
other; a correct guess ends the episode. The shared episode rules, the strict parsing and the
failure handling are in :mod:`userrl_plugins.yesno.game`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from userrl_core.strict_reply import ask_strictly, parse_choice
from userrl_core.types import Message, Simulator, SimulatorRequest, Task
from userrl_plugins.yesno.game import GameRules, GameSettings, Grade, QuestionGameFactory

from . import prompts
from .entities import DEFAULT_ENTITY_FILE, DEFAULT_VAL_PARQUET, Entity, EntityFileError, load_entities, resolve_entity

SETTINGS_KEY = "env.TelepathyGym"
JUDGMENT_KEY = "judgment"


class TelepathyGymSettings(GameSettings):
    """The recipe's ``env.TelepathyGym`` mapping."""

    entity_file: str | None = Field(
        None, description="JSON list of entities (title, target_entity); the shipped UserRL file by default."
    )


class TelepathyRules(GameRules):
    """One entity's prompts and the correct/wrong grader."""

    name = "TelepathyGym"
    success_threshold = 1.0

    def __init__(self, entity: Entity):
        self.entity = entity

    def question_messages(self, question: str) -> list[Message]:
        return prompts.question_messages(self.entity, question)

    async def grade(self, simulator: Simulator, answer: str, *, retries: int) -> Grade:
        request = SimulatorRequest(purpose="judge", messages=prompts.grader_messages(self.entity, answer))
        parsed = await ask_strictly(
            simulator, request, lambda text: parse_choice(text, ("Yes", "No"), key=JUDGMENT_KEY),
            retries=retries, instruction=prompts.GRADER_INSTRUCTION, what="TelepathyGym grader",
        )
        correct = parsed.value == "Yes"
        return Grade(
            score=1.0 if correct else 0.0,
            feedback=prompts.CORRECT if correct else prompts.WRONG,
            calls=parsed.calls,
            reasks=parsed.reasks,
            details={"judgment": parsed.value},
        )


class TelepathyGymFactory(QuestionGameFactory):
    """The registered ``TelepathyGym`` factory: builds episodes, validates dataset rows."""

    settings_model = TelepathyGymSettings
    settings_key = SETTINGS_KEY
    data_file_key = "entity_file"
    default_data_file = str(DEFAULT_ENTITY_FILE)
    file_error = EntityFileError
    default_tasks = str(DEFAULT_VAL_PARQUET)

    def load(self, file: str) -> Any:
        return load_entities(file)

    def resolve(self, task: Task, file: str) -> Entity:
        return resolve_entity(task, file)

    def rules(self, item: Entity, settings: TelepathyGymSettings) -> TelepathyRules:
        return TelepathyRules(item)


make_env = TelepathyGymFactory()
