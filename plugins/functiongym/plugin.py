"""Registers the FunctionGym environment with userrl."""

from __future__ import annotations

from userrl_core import hookimpl
from userrl_plugins.functiongym.env import make_env


@hookimpl
def register_environments(register):
    register(
        "FunctionGym",
        make_env,
        description="Find a hidden arithmetic rule by probing it, then answer its value at a test case "
        "(UserRL's FunctionGym; no simulator).",
    )
