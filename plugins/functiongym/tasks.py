"""FunctionGym tasks: hidden rules with their test case, looked up by the dataset row's ``id``.

UserRL's parquet rows carry only ``env_name`` and ``id`` (``func-484``); the rule, the test case
and the expected result live in ``functions.json`` (538 entries, shipped in
``data/userrl-gyms/functiongym/``). A plain JSON task may carry ``rule``, ``test_case`` and
``expected_result`` itself, which then win. Every rule is parsed with the safe evaluator when
the bank loads, so a bad rule is reported with its file and index before any episode runs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from userrl_core.types import Task
from userrl_plugins.json_files import read_json, validated
from userrl_plugins.functiongym.rule import Rule, RuleEvaluationError, RuleSyntaxError

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "userrl-gyms" / "functiongym"
DEFAULT_FUNCTIONS_FILE = DATA_DIR / "functions.json"
DEFAULT_VAL_PARQUET = DATA_DIR / "test.parquet"
ANSWER_TOLERANCE = 1e-6
"""An answer within this of the expected result is correct (UserRL's ``compare_answers``)."""


class FunctionTask(BaseModel):
    """One hidden rule, the four inputs of its test case and the result expected for them."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    id: str = Field(min_length=1)
    rule: str = Field(min_length=1, description="Arithmetic over a, b, c, d, e.g. 'c * (a * b) * d'.")
    test_case: tuple[float, float, float, float] = Field(description="The inputs whose result the agent must give.")
    expected_result: float = Field(description="The rule's value at the test case.")

    @field_validator("rule")
    @classmethod
    def _rule_parses(cls, value: str) -> str:
        try:
            Rule(value)
        except RuleSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _expected_matches_rule(self) -> "FunctionTask":
        if not math.isfinite(self.expected_result):
            raise ValueError("expected_result must be a finite number")
        try:
            value = Rule(self.rule)(*self.test_case)
        except RuleEvaluationError as exc:
            raise ValueError(f"rule {self.rule!r} cannot be evaluated at the test case: {exc}") from None
        if abs(value - self.expected_result) > ANSWER_TOLERANCE:
            raise ValueError(
                f"expected_result {self.expected_result} differs from the rule's value {value} at the test case"
            )
        return self

    @property
    def evaluator(self) -> Rule:
        return _rule(self.rule)


@lru_cache(maxsize=4096)
def _rule(text: str) -> Rule:
    return Rule(text)


class FunctionBankError(ValueError):
    """A functions file that cannot be read, or an id that is not in it; ``field`` names what is at fault."""

    def __init__(self, message: str, field: str = "payload"):
        super().__init__(message)
        self.field = field


class FunctionBank:
    """FunctionGym tasks by id."""

    def __init__(self, tasks: dict[str, FunctionTask], file: str):
        self._tasks = tasks
        self.file = file

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self):
        return iter(self._tasks.values())

    def get(self, task_id: str) -> FunctionTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise FunctionBankError(
                f"function id {task_id!r} is not in {Path(self.file).name} and the row carries no rule",
                field="payload.id",
            ) from None


@lru_cache(maxsize=4)
def load_bank(file: str) -> FunctionBank:
    def error(message: str) -> FunctionBankError:
        return FunctionBankError(message, field="functions_file")

    rows = read_json(file, list, f"FunctionGym functions file {file} must hold a JSON list", error)
    tasks: dict[str, FunctionTask] = {}
    for index, row in enumerate(rows):
        task = validated(FunctionTask, row, f"{file} entry {index}", error)
        tasks[task.id] = task
    return FunctionBank(tasks, str(Path(file)))


def resolve_task(task: Task, bank: FunctionBank) -> FunctionTask:
    """The rule behind a dataset row: the row's own ``rule`` (with ``test_case`` and
    ``expected_result``) when it has one, else the bank's entry for its ``id``."""
    payload: dict[str, Any] = {k: v for k, v in task.payload.items() if v is not None}
    payload.setdefault("id", task.id)
    if "rule" in payload:
        return FunctionTask.model_validate(payload)
    task_id = payload.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise FunctionBankError("the task needs a non-empty text id", field="payload.id")
    return bank.get(task_id)
