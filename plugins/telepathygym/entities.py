"""TelepathyGym's entities and how a dataset row names one.

UserRL's rows carry ``create_kwargs.title`` (and the category); the entity behind it — the
``target_entity`` text the simulated user thinks of — lives in ``all_entities_refined.json``
(401 entities, shipped in ``data/userrl-gyms/telepathygym/``). A row names an entity by its
title or its ``id`` (case-insensitive), as UserRL looks it up. A plain JSON task may carry
``target_entity`` itself, which then wins.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.types import Task
from userrl_plugins.json_files import read_json, validated

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "userrl-gyms" / "telepathygym"
DEFAULT_ENTITY_FILE = DATA_DIR / "all_entities_refined.json"
DEFAULT_VAL_PARQUET = DATA_DIR / "test.parquet"


class Entity(BaseModel):
    """One hidden entity: ``target_entity`` is what the simulated user thinks of."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    title: str = Field(min_length=1)
    target_entity: str = Field(min_length=1, description="The entity with a short description.")
    id: str = ""
    category: str = ""


class EntityFileError(ValueError):
    """An entity file that cannot be read, or a row naming no known entity (``field`` says which)."""

    def __init__(self, message: str, field: str = "payload"):
        super().__init__(message)
        self.field = field


@lru_cache(maxsize=4)
def load_entities(file: str) -> dict[str, Entity]:
    """Entities by lower-cased title and id."""
    def error(message: str) -> EntityFileError:
        return EntityFileError(message, "entity_file")

    rows = read_json(file, list, f"TelepathyGym entity file {file} must hold a JSON list of entities", error)
    found: dict[str, Entity] = {}
    for i, row in enumerate(rows):
        entity = validated(Entity, row, f"{file} entity {i}", error)
        found[entity.title.casefold()] = entity
        if entity.id:
            found[entity.id.casefold()] = entity
    return found


def resolve_entity(task: Task, entity_file: str) -> Entity:
    """The entity behind a dataset row; raises ``EntityFileError`` or a pydantic error naming the field."""
    payload = dict(task.payload)
    if "target_entity" in payload:
        payload.setdefault("title", task.id)
        return Entity.model_validate(payload)
    title = payload.get("title") or payload.get("id") or task.id
    if not isinstance(title, str) or not title.strip():
        raise EntityFileError("the task needs a non-empty title", "payload.title")
    entity = load_entities(entity_file).get(title.strip().casefold())
    if entity is None:
        raise EntityFileError(
            f"entity {title!r} is not in {Path(entity_file).name} and the row carries no target_entity",
            "payload.title",
        )
    return entity
