"""SearchGym tasks: Bamboogle questions with their answers, looked up by the row's ``id``.

UserRL's parquet rows carry only ``id`` (``Bamboogle-19``); the question and answer live in
``questions.json`` (125 entries, shipped in ``data/userrl-gyms/searchgym/``). A JSON task may
carry ``question`` and ``answer`` itself, which then win.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from userrl_core.types import Task

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
    try:
        rows = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QuestionBankError(f"SearchGym questions file {file} is not readable JSON: {exc}",
                                field="questions_file") from None
    if not isinstance(rows, list):
        raise QuestionBankError(f"SearchGym questions file {file} must hold a JSON list", field="questions_file")
    bank: dict[str, Question] = {}
    for index, row in enumerate(rows):
        try:
            question = Question.model_validate(row)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(entry)"
            raise QuestionBankError(f"{file} entry {index}: {where}: {err['msg']}", field="questions_file") from None
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
