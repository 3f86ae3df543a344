"""Changing a validated config at run time (the stability guard's roll-back changes)."""

from __future__ import annotations

from typing import Any

from userrl_core.config.compose import validate_config
from userrl_core.config.dotted import assign, lookup
from userrl_core.config.schema import RunConfig
from userrl_core.errors import UserError


def apply_changes(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with dotted keys changed (``{"actor.lr": 5e-7}``), re-validated.

    A string ``"*F"`` multiplies the current number by F (the guard's default ``actor.lr: "*0.5"``).
    """
    data = config.model_dump(mode="python")
    for key, value in changes.items():
        try:
            current = lookup(data, key)
            assign(data, key, current * float(value[1:]) if isinstance(value, str) and value.startswith("*") else value)
        except KeyError:
            raise UserError(f"guard change names unknown key {key!r}") from None
    return validate_config(data, source="guard changes")
