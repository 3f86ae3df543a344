"""The TurtleGym environment: uncover what really happened behind a story's surface.

UserRL's semantics (``gyms/TurtleGym/turtlegym/env/story_env.py``), so scores compare: a
question (``action``, or ``search`` as UserRL reads it) gets Yes / No / Maybe against the hidden
story and reward 0; an explanation (``answer``) is graded on the story's evaluation points,
each 0, 0.5 or 1, and scored ``sum(weight × grade)`` (weights sum to 1); the turn reward is
``max(0, score - best earlier score)``. The episode ends when an answer scores at least
``success_threshold`` (1.0, as UserRL's training sets it; its library default is 0.9). The
shared episode rules, the strict parsing and the failure handling are in
:mod:`userrl_plugins.yesno.game`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from userrl_core.strict_reply import ReplyFormatError, Parsed, ask_strictly, grade_value, parse_grade
from userrl_core.bounded_json import first_object_with
from userrl_core.types import Message, Simulator, SimulatorRequest, Task
from userrl_plugins.yesno.game import GameRules, GameSettings, Grade, QuestionGameFactory

from . import prompts
from .stories import DEFAULT_STORY_FILE, DEFAULT_VAL_PARQUET, Story, StoryFileError, load_stories, resolve_story

SETTINGS_KEY = "env.TurtleGym"
GRADES = (0.0, 0.5, 1.0)


class TurtleGymSettings(GameSettings):
    """The recipe's ``env.TurtleGym`` mapping."""

    success_threshold: float = Field(
        1.0, gt=0.0, le=1.0, description="An answer scoring at least this ends the episode (UserRL's training: 1.0)."
    )
    grading: Literal["joint", "per_criterion"] = Field(
        "joint",
        description="'joint': one grader call scores every evaluation point (UserRL); 'per_criterion': one call "
        "per point, concurrently, each answering a single number (small simulators follow it far more often).",
    )
    story_file: str | None = Field(
        None, description="JSON object of stories by id (UserRL's layout); the shipped UserRL file by default."
    )


def parse_joint_grades(text: str, count: int) -> list[float]:
    """``{"scores": [...]}`` with exactly ``count`` grades (numbers, or objects with a ``score``)."""
    obj = first_object_with(text, "scores")
    if obj is None:
        raise ReplyFormatError('no JSON object with a "scores" list in the reply')
    scores = obj["scores"]
    if not isinstance(scores, list) or len(scores) != count:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise ReplyFormatError(f'"scores" must be a list of exactly {count} grades, got {got}')
    return [grade_value(s["score"] if isinstance(s, dict) and "score" in s else s, GRADES) for s in scores]


def weighted_score(story: Story, grades: list[float]) -> float:
    """``sum(weight × grade)``, rounded to 9 places so 0.3 + 0.2 reads 0.5 in transcripts."""
    return round(sum(c.weight * g for c, g in zip(story.criteria, grades)), 9)


class TurtleRules(GameRules):
    """One story's prompts and its weighted-criteria grader."""

    name = "TurtleGym"

    def __init__(self, story: Story, settings: TurtleGymSettings):
        self.story = story
        self.mode = settings.grading
        self.success_threshold = settings.success_threshold

    def question_messages(self, question: str) -> list[Message]:
        return prompts.question_messages(self.story, question)

    async def grade(self, simulator: Simulator, answer: str, *, retries: int) -> Grade:
        if self.mode == "joint":
            grades, calls = await self._joint(simulator, answer, retries)
        else:
            grades, calls = await self._per_criterion(simulator, answer, retries)
        points = len(self.story.criteria)
        return Grade(
            score=weighted_score(self.story, grades),
            feedback=prompts.feedback(self.story, grades),
            calls=calls,
            reasks=calls - (1 if self.mode == "joint" else points),
            details={"criterion_grades": grades},
        )

    async def _joint(self, simulator: Simulator, answer: str, retries: int) -> tuple[list[float], int]:
        count = len(self.story.criteria)
        request = SimulatorRequest(purpose="judge", messages=prompts.joint_grader_messages(self.story, answer),
                                   response_format="json")
        parsed = await ask_strictly(
            simulator, request, lambda text: parse_joint_grades(text, count),
            retries=retries, instruction=prompts.joint_instruction(count), what="TurtleGym grader",
        )
        return parsed.value, parsed.calls

    async def _per_criterion(self, simulator: Simulator, answer: str, retries: int) -> tuple[list[float], int]:
        async def one(index: int) -> Parsed[float]:
            request = SimulatorRequest(purpose="judge",
                                       messages=prompts.point_grader_messages(self.story, index, answer))
            return await ask_strictly(
                simulator, request, lambda text: parse_grade(text, GRADES, key="score"),
                retries=retries, instruction=prompts.POINT_INSTRUCTION, what=f"TurtleGym grader (point {index + 1})",
            )

        outcomes = await asyncio.gather(*(one(i) for i in range(len(self.story.criteria))), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [o.value for o in outcomes], sum(o.calls for o in outcomes)


class TurtleGymFactory(QuestionGameFactory):
    """The registered ``TurtleGym`` factory: builds episodes, validates dataset rows."""

    settings_model = TurtleGymSettings
    settings_key = SETTINGS_KEY
    data_file_key = "story_file"
    default_data_file = str(DEFAULT_STORY_FILE)
    file_error = StoryFileError
    default_tasks = str(DEFAULT_VAL_PARQUET)

    def load(self, file: str) -> Any:
        return load_stories(file)

    def resolve(self, task: Task, file: str) -> Story:
        return resolve_story(task, file)

    def rules(self, item: Story, settings: TurtleGymSettings) -> TurtleRules:
        return TurtleRules(item, settings)


make_env = TurtleGymFactory()
