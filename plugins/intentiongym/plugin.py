"""Registers the IntentionGym environment with userrl."""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_plugins.intentiongym.env import make_env


@hookimpl
def register_environments(register):
    register(
        "IntentionGym",
        make_env,
        description="Clarify a vague request by asking one question per turn (UserRL's IntentionGym rewards).",
    )
