"""PersuadeGym tasks: the statement the persona holds and its argument for it.

UserRL's parquet rows carry both in ``create_kwargs`` (``claim``, ``argument``, ``id``), so a
row is complete in itself (UserRL's JSON of statements is not needed). JSON task files give the
same keys.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.types import Task

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "userrl-gyms" / "persuadegym"
DEFAULT_VAL_PARQUET = DATA_DIR / "test.parquet"


class Statement(BaseModel):
    """A statement the persona holds, with the reasoning it starts from."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    claim: str = Field(min_length=1, description="The statement, e.g. 'Anti-aging therapies should be made available'.")
    argument: str = Field(min_length=1, description="The persona's own argument for the statement.")


def resolve_task(task: Task) -> Statement:
    """The statement of a dataset row (pydantic errors name the payload field)."""
    payload = dict(task.payload)
    payload.setdefault("id", task.id)
    return Statement.model_validate(payload)
