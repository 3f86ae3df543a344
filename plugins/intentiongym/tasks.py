"""IntentionGym tasks: the validated shape of a vague request and its missing details, and the
task bank that resolves a dataset row's ``id`` to them.

The verl/UserRL parquet rows carry only the task id, the vague request and its category; the
missing details live in the task bank (two JSON files shipped in ``data/intentiongym/``, from
UserRL). A plain JSON task list may carry ``missing_details`` itself, which then wins.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from userrl_core.types import Task
from userrl_plugins.json_files import read_json, validated

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "intentiongym"
"""The shipped data folder (next to the package sources in a checkout or editable install)."""

DEFAULT_TASK_FILES = (
    DATA_DIR / "all_intentions_train.json",
    DATA_DIR / "all_intentions_test.json",
)
DEFAULT_VAL_PARQUET = DATA_DIR / "userrl_splits" / "test.parquet"

Importance = Literal[1, 2, 3]


class MissingDetail(BaseModel):
    """One detail the vague request leaves out; ``importance`` 3 is critical, 1 nice to have."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1, description="What is missing, e.g. 'Budget range'.")
    importance: Importance = Field(description="3 high, 2 medium, 1 low (the data stores '1'..'3').")
    inquiry: str = Field("", description="An example question that would uncover the detail.")
    options: list[str] = Field(default_factory=list, description="Example answers a user might give.")

    @field_validator("importance", mode="before")
    @classmethod
    def _importance_from_text(cls, value: Any) -> Any:
        # The UserRL files store importance as the strings "1", "2", "3".
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        return value


class IntentionTask(BaseModel):
    """A vague request with the details the agent has to uncover."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    category: str = ""
    task: str = Field(min_length=1, description="The vague request as the user wrote it.")
    missing_details: list[MissingDetail] = Field(min_length=1)


class TaskBankError(ValueError):
    """A task bank file that cannot be read, or an id that is not in the bank.

    ``field`` names the offending task field (dotted), so the dataset loader can point at it.
    """

    def __init__(self, message: str, field: str = "payload"):
        super().__init__(message)
        self.field = field


class TaskBank:
    """IntentionGym tasks by id, read from one or more JSON files (lists of task objects)."""

    def __init__(self, tasks: dict[str, IntentionTask], files: tuple[str, ...]):
        self._tasks = tasks
        self.files = files

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def get(self, task_id: str) -> IntentionTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            names = ", ".join(Path(f).name for f in self.files)
            raise TaskBankError(
                f"task id {task_id!r} is not in the IntentionGym task bank ({names}) and the row "
                "carries no missing_details",
                field="payload.id",
            ) from None

    @classmethod
    def from_files(cls, files: tuple[str, ...] | list[str]) -> "TaskBank":
        return _load_bank(tuple(str(Path(f)) for f in files))


def _file_error(message: str) -> "TaskBankError":
    return TaskBankError(message, field="task_files")


@lru_cache(maxsize=8)
def _load_bank(files: tuple[str, ...]) -> TaskBank:
    tasks: dict[str, IntentionTask] = {}
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise TaskBankError(f"IntentionGym task file {file} does not exist", field="task_files")
        rows = read_json(file, list, f"IntentionGym task file {file} must hold a JSON list of tasks", _file_error)
        for i, row in enumerate(rows):
            task = validated(IntentionTask, row, f"{file} task {i}", _file_error)
            tasks[task.id] = task
    return TaskBank(tasks, files)


def default_bank() -> TaskBank:
    return TaskBank.from_files(DEFAULT_TASK_FILES)


def resolve_task(task: Task, bank: TaskBank) -> IntentionTask:
    """The IntentionGym task behind a dataset row.

    A payload with ``missing_details`` is complete in itself (plain JSON task lists); otherwise
    the row's ``id`` is looked up in ``bank``, and the row's own ``task``/``category`` text (when
    present) replaces the bank's, so an edited parquet prompt and the simulator stay in step.
    Raises :class:`pydantic.ValidationError` or :class:`TaskBankError` naming the field.
    """
    payload = dict(task.payload)
    payload.setdefault("id", task.id)
    if "missing_details" in payload:
        return IntentionTask.model_validate(payload)
    task_id = payload.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise TaskBankError("the task needs a non-empty text id", field="payload.id")
    base = bank.get(task_id)
    overrides = {k: payload[k] for k in ("task", "category") if isinstance(payload.get(k), str) and payload[k]}
    return base.model_copy(update=overrides) if overrides else base
