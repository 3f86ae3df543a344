"""Registers the TurtleGym environment with userrl."""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_plugins.turtlegym.env import make_env


@hookimpl
def register_environments(register):
    register(
        "TurtleGym",
        make_env,
        description="Uncover the hidden story behind a lateral-thinking puzzle by yes/no questions; answers graded "
        "on weighted evaluation points (UserRL's TurtleGym rewards).",
    )
