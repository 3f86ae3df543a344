"""The FunctionGym environment: find a hidden arithmetic rule by probing it, then answer its
value at a test case. Pure code: no simulator is called, so the factory declares that it needs
none.

Semantics follow UserRL's FunctionGym (``gyms/FunctionGym/functiongym/env/function_env.py``), so
scores compare:

- ``action`` with four numbers (``1 2 3 4``): the rule's value at those inputs, rounded to 4
  decimal places. The test case itself is refused (no value is shown), as are inputs where the
  rule has no value (division by zero, overflow). Reward 0.
- ``search`` with ``test``: reveals the four inputs of the test case. Any other query is refused.
  Reward 0.
- ``answer`` with a number: 1.0 and the episode ends when it is within 1e-6 of the expected
  result; otherwise 0.0 and the agent may try again.
- ``finish``: ends the episode with reward 0.
- The episode also ends after ``max_turns`` steps (UserRL: 15 in training).

Malformed contents (three numbers, a word as an answer) get a message and reward 0, as in
UserRL; they count as a step.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.errors import ConfigError
from userrl_core.types import Action, Message, StepResult, Task
from userrl_plugins.env_settings import parse_env_settings
from userrl_plugins.functiongym.rule import RuleEvaluationError
from userrl_plugins.functiongym.tasks import (
    ANSWER_TOLERANCE,
    DEFAULT_FUNCTIONS_FILE,
    DEFAULT_VAL_PARQUET,
    FunctionBank,
    FunctionBankError,
    FunctionTask,
    load_bank,
    resolve_task,
)

SETTINGS_KEY = "env.FunctionGym"
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?")


class FunctionGymSettings(BaseModel):
    """The recipe's ``env.FunctionGym`` mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(15, ge=1, description="Steps per episode at most (UserRL: 15); rollout.max_turns also applies.")
    functions_file: str | None = Field(
        None, description="JSON list of rules (id, rule, test_case, expected_result); the shipped UserRL file by default."
    )
    correct_reward: float = Field(1.0, ge=0.0, description="Reward of a correct answer (UserRL: 1.0).")


def parse_settings(settings: dict[str, Any] | FunctionGymSettings | None) -> FunctionGymSettings:
    return parse_env_settings(FunctionGymSettings, settings, SETTINGS_KEY)


def _bank(settings: FunctionGymSettings) -> FunctionBank:
    try:
        return load_bank(str(settings.functions_file or DEFAULT_FUNCTIONS_FILE))
    except FunctionBankError as exc:
        raise ConfigError(f"{SETTINGS_KEY}.functions_file: {exc}") from None


def format_number(value: float) -> str:
    """``3.0`` -> ``3``, ``0.3333`` -> ``0.3333`` (what the agent reads)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def format_inputs(numbers: tuple[float, ...] | list[float], sep: str = " ") -> str:
    return sep.join(format_number(x) for x in numbers)


OPENING = (
    "A hidden function maps four numbers a, b, c, d to one number, using only +, -, *, / and powers. "
    "Probe it with four numbers, ask for the test case with search 'test', then answer the function's "
    "value at the test case."
)


class FunctionGymEnv:
    """One FunctionGym episode (see the module docstring for the rules)."""

    def __init__(self, *, task: Task, spec: FunctionTask, settings: FunctionGymSettings):
        self.task = task
        self.spec = spec
        self.settings = settings
        self._start()

    def _start(self) -> None:
        self.rewards: list[float] = []
        self.steps = 0
        self.done = False
        self.solved = False
        self.counts = {"probes": 0, "searches": 0, "answers": 0, "refused_test_case": 0, "malformed": 0}

    async def reset(self) -> list[Message]:
        self._start()
        if self.task.prompt:
            return [dict(m) for m in self.task.prompt]
        return [{"role": "user", "content": OPENING}]

    async def step(self, action: Action) -> StepResult:
        if self.done:
            raise RuntimeError("FunctionGym episode is over; call reset() first")
        self.steps += 1
        handler = {
            "action": self._probe,
            "search": self._search,
            "answer": self._answer,
        }.get(action.choice)
        if action.choice == "finish":
            observation, reward, end = self._finish()
        elif handler is None:
            self.counts["malformed"] += 1
            observation, reward, end = f"Unknown choice {action.choice!r}; use action, search or answer.", 0.0, None
        else:
            observation, reward, end = handler(action.content.strip())
        if end is None and self.steps >= self.settings.max_turns:
            end = "max_turns"
        self.rewards.append(reward)
        self.done = end is not None
        info: dict[str, Any] = {"solved": self.solved}
        if end:
            info["end_reason"] = end
        return StepResult(observation=observation, reward=reward, done=self.done, info=info)

    def metrics(self) -> dict[str, float]:
        return {
            "score": float(sum(self.rewards)),
            "solved": float(self.solved),
            "turns": float(self.steps),
            **{name: float(value) for name, value in self.counts.items()},
        }

    # ------------------------------------------------------------------ actions

    def _probe(self, content: str) -> tuple[str, float, str | None]:
        self.counts["probes"] += 1
        if not content:
            self.counts["malformed"] += 1
            return "Give four numbers separated by spaces, e.g. 1 2 3 4.", 0.0, None
        numbers = [float(x) for x in _NUMBER.findall(content)]
        if len(numbers) != 4:
            self.counts["malformed"] += 1
            return f"Give exactly four numbers; found {len(numbers)}.", 0.0, None
        if tuple(numbers) == self.spec.test_case:
            self.counts["refused_test_case"] += 1
            return ("Those are the test case's numbers: their result is what you must answer, so it is not "
                    "shown. Probe with other numbers."), 0.0, None
        try:
            value = round(self.spec.evaluator(*numbers), 4)
        except RuleEvaluationError as exc:
            return (f"The function has no value at {format_inputs(numbers)} ({exc}). "
                    "Try other numbers."), 0.0, None
        return f"f({format_inputs(numbers, ', ')}) = {format_number(value)}", 0.0, None

    def _search(self, content: str) -> tuple[str, float, str | None]:
        self.counts["searches"] += 1
        if content.lower() != "test":
            self.counts["malformed"] += 1
            return "The only search is 'test', which shows the test case.", 0.0, None
        return (f"Test case: {format_inputs(self.spec.test_case)}. Answer with the function's value at these "
                "numbers."), 0.0, None

    def _answer(self, content: str) -> tuple[str, float, str | None]:
        self.counts["answers"] += 1
        try:
            answer = float(content)
        except ValueError:
            self.counts["malformed"] += 1
            return f"{content[:40]!r} is not a number; answer with a single number.", 0.0, None
        if abs(answer - self.spec.expected_result) <= ANSWER_TOLERANCE:
            self.solved = True
            return "Correct: that is the function's value at the test case.", self.settings.correct_reward, "solved"
        return "Wrong answer. Probe the function further and answer again.", 0.0, None

    def _finish(self) -> tuple[str, float, str | None]:
        if self.solved:
            return "Episode finished.", 0.0, "finish"
        return "Episode finished without a correct answer.", 0.0, "finish"


class FunctionGymFactory:
    """The registered ``FunctionGym`` factory: builds episodes, validates dataset rows.

    ``needs_simulator`` is false: FunctionGym's rule is code, so a run of FunctionGym alone
    configures no simulator. ``default_tasks`` is UserRL's test split (78 rows), used by
    ``userrl simulate FunctionGym`` when no task file is given.
    """

    settings_model = FunctionGymSettings
    needs_simulator = False
    default_tasks = str(DEFAULT_VAL_PARQUET)

    def __call__(self, *, task: Task, simulator: Any = None, settings: dict[str, Any] | None = None,
                 seed: int = 0, **kwargs: Any) -> FunctionGymEnv:
        cfg = parse_settings(settings)
        return FunctionGymEnv(task=task, spec=resolve_task(task, _bank(cfg)), settings=cfg)

    def validate_task(self, task: Task, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Raise a ``ValueError`` or pydantic error naming the field when ``task`` cannot run."""
        resolve_task(task, _bank(parse_settings(settings)))


make_env = FunctionGymFactory()
