"""Registers the TelepathyGym environment with userrl."""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_plugins.telepathygym.env import make_env


@hookimpl
def register_environments(register):
    register(
        "TelepathyGym",
        make_env,
        description="Guess the entity the simulated user thinks of by yes/no questions (UserRL's TelepathyGym rewards).",
    )
