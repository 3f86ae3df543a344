"""Registers the SearchGym environment with userrl."""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_plugins.searchgym.env import make_env


@hookimpl
def register_environments(register):
    register(
        "SearchGym",
        make_env,
        description="Answer multi-hop questions with at most 5 web searches; exact match, then an LLM judge "
        "(UserRL's SearchGym).",
    )
