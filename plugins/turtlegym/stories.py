"""TurtleGym's stories and how a dataset row names one.

A story ("turtle soup") has a ``surface`` the player sees, a hidden ``bottom`` (what really
happened) and weighted evaluation criteria that grade an answer. UserRL's rows carry
``create_kwargs.title``; the story lives in ``all_stories_refined.json`` (471 stories keyed by
id, shipped in ``data/userrl-gyms/turtlegym/``), looked up by title (case-insensitive) among
the stories UserRL kept (``judgment == "Yes"``). A plain JSON task may carry ``surface``,
``bottom`` and ``criteria`` itself, which then win.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from userrl_core.types import Task
from userrl_plugins.json_files import read_json, validated

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "userrl-gyms" / "turtlegym"
DEFAULT_STORY_FILE = DATA_DIR / "all_stories_refined.json"
DEFAULT_VAL_PARQUET = DATA_DIR / "test.parquet"


class Criterion(BaseModel):
    """One evaluation point: a statement the answer should cover and its weight."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    statement: str = Field(min_length=1)
    weight: float = Field(gt=0.0, le=1.0, validation_alias=AliasChoices("weight", "score"),
                          description="The share of the grade (UserRL stores it as 'score').")


class Story(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    title: str = Field(min_length=1)
    surface: str
    bottom: str = Field(min_length=1)
    criteria: list[Criterion] = Field(min_length=1)

    @field_validator("criteria")
    @classmethod
    def _weights_sum_to_one(cls, value: list[Criterion]) -> list[Criterion]:
        total = sum(c.weight for c in value)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"criterion weights must sum to 1, they sum to {total:g}")
        return value


class StoryFileError(ValueError):
    """A story file that cannot be read, or a row naming no known story (``field`` says which)."""

    def __init__(self, message: str, field: str = "payload"):
        super().__init__(message)
        self.field = field


@lru_cache(maxsize=4)
def load_stories(file: str) -> dict[str, Story]:
    """The kept stories by lower-cased title."""
    def error(message: str) -> StoryFileError:
        return StoryFileError(message, "story_file")

    raw = read_json(file, dict, f"TurtleGym story file {file} must hold a JSON object of stories by id", error)
    found: dict[str, Story] = {}
    for key, row in raw.items():
        if not isinstance(row, dict) or row.get("judgment") != "Yes":
            continue  # UserRL keeps only the stories its own review accepted
        story = validated(Story, {
            "title": row.get("new_title") or f"Story {key}",
            "surface": row.get("new_surface", ""),
            "bottom": row.get("new_bottom"),
            "criteria": row.get("evaluation"),
        }, f"{file} story {key}", error)
        found[story.title.casefold()] = story
    return found


def resolve_story(task: Task, story_file: str) -> Story:
    """The story behind a dataset row; raises ``StoryFileError`` or a pydantic error naming the field."""
    payload = dict(task.payload)
    if "criteria" in payload:
        payload.setdefault("title", task.id)
        return Story.model_validate(payload)
    title = payload.get("title") or task.id
    if not isinstance(title, str) or not title.strip():
        raise StoryFileError("the task needs a non-empty title", "payload.title")
    story = load_stories(story_file).get(title.strip().casefold())
    if story is None:
        raise StoryFileError(
            f"story {title!r} is not in {Path(story_file).name} and the row carries no criteria", "payload.title"
        )
    return story
