"""The episode shared by UserRL's yes/no question games (TelepathyGym, TurtleGym).

The simulated user holds a hidden truth (an entity, a story's bottom). Per step the agent:

- asks (``action``; UserRL also reads ``search`` as a question): the user answers **Yes**,
  **No** or **Maybe** about the hidden truth; the turn reward is 0. The observation is the
  answer word.
- answers (``answer``): a grader scores the answer in [0, 1] (the game decides how); the turn
  reward is the improvement over the best earlier answer, floored at 0 (UserRL's
  ``max(0, score - best)``), so retrying a wrong answer is allowed and a worse retry costs
  nothing; ``best`` is then raised. The episode ends when the score reaches the game's success
  threshold.
- finishes (``finish``): the episode ends, reward 0, no simulator call.

UserRL then subtracts ``step_penalty × steps so far`` (0 by default) and clips the reward to
[0, 1]; so does this module. The episode also ends after ``max_turns`` steps.

Every simulator reply is parsed strictly (:mod:`userrl_core.strict_reply`): an unusable reply
is re-asked ``reply_retries`` times, then the step fails with ``status=SIMULATOR_FAILED`` and
``reward=None`` (the episode is counted as failed and left out of training), like a simulator
call that failed. No reply is ever guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.errors import ConfigError
from userrl_core.strict_reply import UnusableReply, ask_strictly, parse_choice
from userrl_core.types import (
    Action,
    Message,
    Simulator,
    SimulatorError,
    SimulatorRequest,
    StepResult,
    StepStatus,
    Task,
)
from userrl_plugins.env_settings import parse_env_settings as parse_settings

YES, NO, MAYBE = "Yes", "No", "Maybe"
REPLY_CHOICES = (YES, NO, MAYBE)
REPLY_KEY = "response"
REPLY_INSTRUCTION = 'Answer again with exactly one word: Yes, No or Maybe (or JSON {"response": "Yes"}).'


class GameSettings(BaseModel):
    """Settings every yes/no question game has (``env.<GameName>`` in a recipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(15, ge=1, description="Steps per episode at most (UserRL: 15); rollout.max_turns also applies.")
    reply_retries: int = Field(
        2, ge=0, description="Re-asks when a simulator reply (Yes/No/Maybe or a grade) cannot be parsed; then the step fails."
    )
    step_penalty: float = Field(0.0, ge=0.0, description="Subtracted × the step count from every turn reward (UserRL: 0).")
    reward_in_observation: bool = Field(
        True, description="Append 'Reward: <r>' to every observation the agent sees, as UserRL's tool does."
    )


@dataclass(frozen=True)
class Grade:
    """A graded answer: its score in [0, 1], the feedback the agent reads, and the simulator
    calls and re-asks the grading took."""

    score: float
    feedback: str
    calls: int = 1
    reasks: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class GameRules:
    """What one game adds to the shared episode: its prompts, its grader and its threshold."""

    name: str = ""
    success_threshold: float = 1.0

    def question_messages(self, question: str) -> list[Message]:
        raise NotImplementedError

    async def grade(self, simulator: Simulator, answer: str, *, retries: int) -> Grade:
        """Score ``answer``; raises ``UnusableReply`` or ``SimulatorError`` when it cannot."""
        raise NotImplementedError


def with_reward(observation: str, reward: float) -> str:
    """The observation as UserRL's tool returns it: the text, a newline, ``Reward: <r>``."""
    return f"{observation}\nReward: {float(reward)}"


def turn_reward(score: float, best: float, *, step: int, step_penalty: float) -> float:
    """UserRL's answer reward: ``max(0, score - best) - step_penalty × step``, clipped to [0, 1].
    A question's reward is this with ``score = best`` (0 before the penalty)."""
    improvement = max(0.0, score - best)
    return round(min(1.0, max(0.0, improvement - step_penalty * step)), 9)


class QuestionGameEnv:
    """One episode of a yes/no question game (see the module docstring)."""

    def __init__(self, *, task: Task, rules: GameRules, simulator: Simulator, settings: GameSettings, seed: int):
        if simulator is None:
            raise ConfigError(f"{rules.name} needs a simulator (simulator.name: hf, litellm, ...)")
        self.task = task
        self.rules = rules
        self.simulator = simulator
        self.settings = settings
        self.seed = seed
        self._start()

    def _start(self) -> None:
        self.steps = 0
        self.questions = 0
        self.answers = 0
        self.best = 0.0
        self.rewards: list[float] = []
        self.replies = {choice: 0 for choice in REPLY_CHOICES}
        self.reasks = 0
        self.done = False
        self.failed = False

    # ------------------------------------------------------------------ protocol

    async def reset(self) -> list[Message]:
        self._start()
        return [dict(m) for m in self.task.prompt]

    async def step(self, action: Action) -> StepResult:
        if self.done:
            raise RuntimeError(f"{self.rules.name} episode is over; call reset() first")
        self.steps += 1
        if action.choice == "finish":
            return self._result("Game finished.", 0.0, "finish", {})
        try:
            if action.choice == "answer":
                return await self._answer(action.content.strip())
            return await self._ask(action.content.strip())  # action, and search as UserRL reads it
        except (SimulatorError, UnusableReply) as exc:
            return self._fail(str(exc))

    def metrics(self) -> dict[str, float]:
        return {
            "score": float(sum(self.rewards)),
            "best_answer_score": self.best,
            "solved": float(self.best >= self.rules.success_threshold),
            "turns": float(self.steps),
            "questions": float(self.questions),
            "answers": float(self.answers),
            "replies/yes": float(self.replies[YES]),
            "replies/no": float(self.replies[NO]),
            "replies/maybe": float(self.replies[MAYBE]),
            "simulator/reasks": float(self.reasks),
        }

    # ------------------------------------------------------------------ steps

    async def _ask(self, question: str) -> StepResult:
        self.questions += 1
        request = SimulatorRequest(purpose="reply", messages=self.rules.question_messages(question))
        parsed = await ask_strictly(
            self.simulator, request, lambda text: parse_choice(text, REPLY_CHOICES, key=REPLY_KEY),
            retries=self.settings.reply_retries, instruction=REPLY_INSTRUCTION, what=f"{self.rules.name} user",
        )
        self.reasks += parsed.reasks
        self.replies[parsed.value] += 1
        reward = turn_reward(self.best, self.best, step=self.steps, step_penalty=self.settings.step_penalty)
        return self._result(parsed.value, reward, None, {"reply": parsed.value, "simulator/calls": parsed.calls})

    async def _answer(self, answer: str) -> StepResult:
        self.answers += 1
        grade = await self.rules.grade(self.simulator, answer, retries=self.settings.reply_retries)
        self.reasks += grade.reasks
        reward = turn_reward(grade.score, self.best, step=self.steps, step_penalty=self.settings.step_penalty)
        self.best = max(self.best, grade.score)
        solved = grade.score >= self.rules.success_threshold
        info = {"answer_score": grade.score, "best_answer_score": self.best, "simulator/calls": grade.calls,
                **grade.details}
        return self._result(grade.feedback, reward, "solved" if solved else None, info)

    def _result(self, text: str, reward: float, end_reason: str | None, info: dict[str, Any]) -> StepResult:
        self.rewards.append(reward)
        if end_reason is None and self.steps >= self.settings.max_turns:
            end_reason = "max_turns"
        self.done = end_reason is not None
        if end_reason:
            info["end_reason"] = end_reason
        observation = with_reward(text, reward) if self.settings.reward_in_observation else text
        return StepResult(observation=observation, reward=reward, done=self.done, info=info)

    def _fail(self, error: str) -> StepResult:
        self.done = True
        self.failed = True
        return StepResult(observation="", reward=None, done=True, info={"end_reason": "failed"},
                          status=StepStatus.SIMULATOR_FAILED, error=error)



class QuestionGameFactory:
    """A registered yes/no game's factory: it parses the recipe's ``env.<name>`` mapping, finds the
    game's item (an entity, a story) for a dataset row in the game's data file, and builds a
    :class:`QuestionGameEnv` with the game's rules. A game sets the class attributes and the
    three methods below."""

    settings_model: type[GameSettings] = GameSettings
    settings_key = ""  # "env.<name>"
    data_file_key = ""  # the settings field naming the data file ("entity_file")
    default_data_file = ""
    file_error: type[Exception] = ValueError  # what load() raises for a bad data file
    needs_simulator = True
    default_tasks = ""

    def load(self, file: str) -> Any:
        """Read (and cache) the data file; raise ``file_error`` when it cannot be used."""
        raise NotImplementedError

    def resolve(self, task: Task, file: str) -> Any:
        """The item behind a dataset row; a ``ValueError`` or pydantic error names the field."""
        raise NotImplementedError

    def rules(self, item: Any, settings: Any) -> GameRules:
        raise NotImplementedError

    def __call__(self, *, task: Task, simulator: Simulator, settings: dict[str, Any] | None = None,
                 seed: int = 0, **kwargs: Any) -> QuestionGameEnv:
        cfg = parse_settings(self.settings_model, settings, self.settings_key)
        rules = self.rules(self._item(task, cfg), cfg)
        return QuestionGameEnv(task=task, rules=rules, simulator=simulator, settings=cfg, seed=seed)

    def validate_task(self, task: Task, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Raise a ``ValueError`` or pydantic error naming the field when ``task`` cannot run."""
        self._item(task, parse_settings(self.settings_model, settings, self.settings_key))

    def _item(self, task: Task, cfg: Any) -> Any:
        file = getattr(cfg, self.data_file_key) or self.default_data_file
        try:
            self.load(file)
        except self.file_error as exc:
            raise ConfigError(f"{self.settings_key}.{self.data_file_key}: {exc}") from None
        return self.resolve(task, file)
