"""``userrl simulator serve RECIPE``: run the recipe's simulator server by hand.

Starts SGLang's OpenAI-compatible server with the recipe's ``simulator_server`` settings (model,
GPU, port, context length, memory fraction, max running requests), waits until it is healthy,
prints how a recipe's ``simulator`` section reaches it, and keeps it up until Ctrl-C or until the
server exits; then the whole server process group is stopped.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from userrl_core.config.compose import load_recipe
from userrl_core.errors import MissingRequirementError
from userrl_core.training.simulator_server import (
    server_requirements,
    ManagedSimulatorServer,
    SimulatorServerError,
    routed_simulator_config,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("simulator", help="Simulator tools: 'serve' runs the recipe's simulator server.")
    actions = parser.add_subparsers(dest="simulator_action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="Start the recipe's SGLang simulator server and keep it up.")
    serve.add_argument("recipe", help="Recipe YAML with a simulator_server section.")
    serve.add_argument("overrides", nargs="*", help="Hydra overrides (simulator_server.port=30001).")
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    import importlib.util

    config = load_recipe(args.recipe, args.overrides)
    settings = config.simulator_server
    requirements = server_requirements(config.simulator_server)
    absent = [m for m in requirements.modules if importlib.util.find_spec(m) is None]
    if absent:
        hints = "; ".join(requirements.modules[m] for m in absent)
        raise MissingRequirementError(f"{args.recipe}: simulator_server: {requirements.why}; {hints}")
    routed = routed_simulator_config(config.simulator, settings)
    server = ManagedSimulatorServer(settings)
    print(f"starting {settings.model} on GPU {settings.gpu} (log: {server.log_path})", flush=True)
    with server:
        print(f"healthy after {server.startup_seconds:.1f} s; a recipe reaches it with:\n"
              f"  simulator: {{name: {routed.name}, model: {routed.model}, api_base: {routed.api_base}}}\n"
              "Ctrl-C stops it.", flush=True)
        while server.running:
            time.sleep(1.0)
        raise SimulatorServerError(f"the simulator server exited; last log lines:\n{server.log_tail()}")
