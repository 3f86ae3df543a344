"""Registers the PersuadeGym environment with userrl."""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_plugins.persuadegym.env import make_env


@hookimpl
def register_environments(register):
    register(
        "PersuadeGym",
        make_env,
        description="Argue a simulated persona out of a statement; reward = levels moved toward disagreement / 6 "
        "(UserRL's PersuadeGym).",
    )
