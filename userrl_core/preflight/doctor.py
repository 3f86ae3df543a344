"""``userrl doctor [RECIPE]``: what this machine has, and what a recipe needs that it lacks.

Every check is one line, ``PASS``, ``FAIL`` or ``INFO``. Without a recipe only the basics are
required (Python, torch); GPUs are information. With a recipe, everything the recipe needs is
required: it validates, its plugin names are registered, its GPUs, extras and model are here
(:func:`userrl_core.preflight.requirements_check.find_missing`), its simulator's API-key variable is set
(the value is never shown), its data files exist, the port of a server the run would start is
free and the OpenAI-compatible server it would call on this machine is listening.
A failed required check makes the exit status 1.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence
from urllib.parse import urlparse

from userrl_core.errors import UserError

MIN_PYTHON = (3, 10)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    status: Literal["pass", "fail", "info"]
    detail: str
    required: bool = False  # a failing required check makes the exit status 1

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.name}: {self.detail}"


def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info[:2] >= MIN_PYTHON
    wanted = ".".join(map(str, MIN_PYTHON))
    return Check("python", "pass" if ok else "fail", f"{version} (needs >= {wanted})", required=True)


def torch_check() -> Check:
    try:
        import torch
    except Exception as exc:  # a broken install is exactly what doctor reports
        return Check("torch", "fail", f"cannot import torch: {type(exc).__name__}: {exc}", required=True)
    return Check("torch", "pass", f"{torch.__version__}", required=True)


def cuda_checks() -> list[Check]:
    try:
        import torch
    except Exception:
        return []
    if not torch.cuda.is_available():
        return [Check("cuda", "info", "no CUDA device visible (CPU recipes only)")]
    checks = [Check("cuda", "info", f"{torch.cuda.device_count()} device(s), CUDA {torch.version.cuda}")]
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        try:
            free, total = torch.cuda.mem_get_info(index)
            memory = f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
        except RuntimeError as exc:
            memory = f"memory unknown ({exc})"
        checks.append(Check(f"cuda:{index}", "info", f"{name}, {memory}"))
    return checks


def plugin_checks() -> tuple[list[Check], Any]:
    """One line per plugin; returns the manager too (None when plugins cannot load at all)."""
    from userrl_core.plugins import get_plugin_manager

    try:
        manager = get_plugin_manager()
    except UserError as exc:  # a failure under USERRL_STRICT_PLUGINS
        return [Check("plugins", "fail", str(exc), required=True)], None
    checks = []
    for entry in manager.registry.conflicts():
        checks.append(Check(f"{entry.kind.label} {entry.name}", "fail", entry.conflict_message()))
    for info in sorted(manager.plugins.values(), key=lambda p: p.name):
        where = f"{info.distribution} {info.version}"
        if info.status == "ok":
            checks.append(Check(f"plugin {info.name}", "pass", where))
        elif info.status == "failed":
            checks.append(Check(f"plugin {info.name}", "fail", f"{where}: {info.error}"))
        else:
            detail = f"{where}: {info.status}" + (f" ({info.hint})" if info.hint else "")
            checks.append(Check(f"plugin {info.name}", "info", detail))
    return checks, manager


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def recipe_checks(recipe: str, overrides: Sequence[str], manager: Any) -> list[Check]:
    from userrl_core.config import check_plugin_names, load_recipe
    from userrl_core.preflight.requirements_check import find_missing

    try:
        config = load_recipe(recipe, list(overrides))
    except UserError as exc:
        return [Check("recipe", "fail", str(exc), required=True)]
    checks = [Check("recipe", "pass", f"{recipe} is valid")]
    if manager is not None:
        try:
            check_plugin_names(config, manager.registry, source=recipe)
            checks.append(Check("plugin names", "pass", "every plugin the recipe names is registered"))
        except UserError as exc:
            checks.append(Check("plugin names", "fail", str(exc), required=True))

    missing = find_missing(config)
    for item in missing:
        checks.append(Check(item.key, "fail", f"{item.what} ({item.fix})", required=True))
    key_env = config.simulator.api_key_env
    if key_env and not any(m.key == "simulator.api_key_env" for m in missing):
        checks.append(Check("simulator.api_key_env", "pass", f"{key_env} is set"))

    checks += wandb_checks(config)

    for key, files in (("data.train_files", config.data.train_files), ("data.val_files", config.data.val_files)):
        for index, name in enumerate(files):
            present = Path(name).expanduser().is_file()
            checks.append(Check(f"{key}[{index}]", "pass" if present else "fail",
                                name if present else f"file not found: {name}", required=True))

    server = config.simulator_server
    if server.enabled:
        free = port_is_free(server.host, server.port)
        checks.append(Check(
            "simulator_server.port", "pass" if free else "fail",
            f"{server.host}:{server.port} is " + ("free" if free else "in use (the run starts its own server there)"),
            required=True,
        ))
    elif config.simulator.api_base:
        url = urlparse(config.simulator.api_base)
        if url.hostname in LOOPBACK_HOSTS:
            port = url.port or (443 if url.scheme == "https" else 80)
            up = port_is_listening(url.hostname, port)
            checks.append(Check(
                "simulator.api_base", "pass" if up else "fail",
                f"{url.hostname}:{port} is " + ("listening" if up else "not listening (start the server first)"),
                required=True,
            ))
    return checks


def wandb_checks(config: Any, environ: dict[str, str] | None = None) -> list[Check]:
    """wandb: installed when the recipe logs to it; online mode needs a key (else the run logs
    offline, with one warning line: information here, not a failure)."""
    wandb_config = config.logging.wandb
    if not wandb_config.enabled:
        return []
    from importlib.util import find_spec

    from userrl_core.training.metrics import wandb_has_credentials

    if find_spec("wandb") is None:
        return [Check("logging.wandb", "fail", "wandb is not installed (pip install 'userrl[wandb]')", required=True)]
    if wandb_config.mode == "online" and not wandb_has_credentials(environ):
        return [Check("logging.wandb", "info", "WANDB_API_KEY is not set (and no `wandb login`): the run will log "
                      "offline into its folder; `wandb sync` uploads it later")]
    return [Check("logging.wandb", "pass", f"wandb {wandb_config.mode}"
                  + (" (WANDB_API_KEY is set)" if wandb_config.mode == "online" else ""))]


def run_doctor(recipe: str | None = None, overrides: Sequence[str] = ()) -> list[Check]:
    checks = [python_check(), torch_check()]
    plugin_lines, manager = plugin_checks()
    checks += plugin_lines
    checks += cuda_checks()
    if recipe is not None:
        checks += recipe_checks(recipe, overrides, manager)
    return checks


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.required and c.status == "fail" for c in checks) else 0
