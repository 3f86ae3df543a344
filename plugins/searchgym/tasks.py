"""SearchGym tasks: Bamboogle questions with their answers, looked up by the row's ``id``.

UserRL's parquet rows carry only ``id`` (``Bamboogle-19``); the question and answer live in
``questions.json`` (125 entries, shipped in ``data/userrl-gyms/searchgym/``). A JSON task may
carry ``question`` and ``answer`` itself, which then win.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.types import Task
from userrl_plugins.json_files import read_json, validated

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "userrl-gyms" / "searchgym"
DEFAULT_QUESTIONS_FILE = DATA_DIR / "questions.json"
DEFAULT_VAL_PARQUET = DATA_DIR / "test.parquet"


class Question(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="The reference answer.")


class QuestionBankError(ValueError):
    """A questions file that cannot be read, or an id that is not in it."""

    def __init__(self, message: str, field: str = "payload"):
        super().__init__(message)
        self.field = field


@lru_cache(maxsize=4)
def load_bank(file: str) -> dict[str, Question]:
    def error(message: str) -> QuestionBankError:
        return QuestionBankError(message, field="questions_file")

    rows = read_json(file, list, f"SearchGym questions file {file} must hold a JSON list", error)
    bank: dict[str, Question] = {}
    for index, row in enumerate(rows):
        question = validated(Question, row, f"{file} entry {index}", error)
        bank[question.id] = question
    return bank


def resolve_task(task: Task, file: str) -> Question:
    payload: dict[str, Any] = dict(task.payload)
    payload.setdefault("id", task.id)
    if "question" in payload or "answer" in payload:
        return Question.model_validate(payload)
    bank = load_bank(file)
    if payload["id"] not in bank:
        raise QuestionBankError(f"question id {payload['id']!r} is not in {Path(file).name} and the row carries no "
                                "question", field="payload.id")
    return bank[payload["id"]]
