"""The fast "what is missing on this machine" check that a run does first.

A recipe written for GPUs must fail in seconds on a laptop, with one message that lists every
missing thing (GPUs, an optional extra, the model files, an API key), not after minutes of
loading. Nothing here imports torch: GPUs are counted from the NVIDIA driver's ``/proc`` entries
(or ``nvidia-smi -L``), extras with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from userrl_core.errors import MissingRequirementError
from userrl_core.types import Requirements

PROC_GPUS = Path("/proc/driver/nvidia/gpus")



def declared_requirements(config: Any, registry: Any = None) -> list[tuple[str, str, Requirements]]:
    """(recipe key, name, requirements) of every factory the recipe names that declares
    ``requirements(config)``, and of the simulator server when the recipe starts one."""
    from userrl_core.config.compose import plugin_references

    if registry is None:
        from userrl_core.plugins import get_plugin_manager

        registry = get_plugin_manager().registry
    out: list[tuple[str, str, Requirements]] = []
    for kind, name, key in plugin_references(config):
        entry = registry.entry_or_none(kind, name)
        declare = getattr(getattr(entry, "obj", None), "requirements", None)
        if callable(declare):
            needs = declare(config)
            if isinstance(needs, Requirements):
                out.append((key, name, needs))
    server = getattr(config, "simulator_server", None)
    if server is not None and server.enabled:
        from userrl_core.training.simulator_server import server_requirements

        out.append(("simulator_server.enabled", "simulator server", server_requirements(config.simulator_server)))
    return out


def count_visible_gpus() -> int:
    """NVIDIA GPUs this process may use, without initialising CUDA.

    ``CUDA_VISIBLE_DEVICES`` (when set) limits the count, as it limits CUDA itself.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        installed = _count_installed_gpus()
        return min(len(ids), installed)
    return _count_installed_gpus()


def _count_installed_gpus() -> int:
    if PROC_GPUS.is_dir():
        return sum(1 for _ in PROC_GPUS.iterdir())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def required_gpu_ids(config: Any) -> list[int]:
    """Physical GPU ids the recipe uses on this node: training GPUs plus the simulator server's."""
    trainer = config.trainer
    ids = list(trainer.gpu_ids) if trainer.gpu_ids else list(range(trainer.n_gpus_per_node))
    server = getattr(config, "simulator_server", None)
    if server is not None and server.enabled and server.gpu not in ids:
        ids.append(server.gpu)
    return sorted(ids)


def model_is_available(path: str) -> bool:
    """A local folder, the built-in PyPI model, or a hub id already in the local HF cache."""
    if path.startswith("builtin:"):
        return True
    if Path(path).expanduser().is_dir():
        return True
    if path.count("/") != 1 or path.startswith(("/", ".", "~")):
        return False
    snapshots = hf_cache_dir() / ("models--" + path.replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any((snap / "config.json").is_file() for snap in snapshots.iterdir())


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub does (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


@dataclass
class Missing:
    """One missing thing, with the recipe key it comes from and how to fix it."""

    key: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.what} ({self.fix})"


def find_missing(
    config: Any,
    *,
    gpu_count: Callable[[], int] = count_visible_gpus,
    module_available: Callable[[str], bool] = lambda m: importlib.util.find_spec(m) is not None,
    environ: dict[str, str] | None = None,
    registry: Any = None,
) -> list[Missing]:
    """Everything the recipe needs that this machine lacks (empty when it can run): GPUs, what
    the recipe's plugins declare (``Requirements``), the model, the simulator's key."""
    env = os.environ if environ is None else environ
    missing: list[Missing] = []

    needed = required_gpu_ids(config)
    if needed:
        have = gpu_count()
        if have <= max(needed):
            missing.append(Missing(
                "trainer.gpu_ids" if config.trainer.gpu_ids else "trainer.n_gpus_per_node",
                f"the recipe uses GPU ids {needed} but this machine has {have} visible GPU(s)",
                "run on a machine with enough GPUs, or use a CPU recipe such as recipes/quickstart.yaml",
            ))

    for key, name, needs in declared_requirements(config, registry):
        absent = [m for m in needs.modules if not _safe_available(module_available, m)]
        if absent:
            names = ", ".join(repr(m) for m in absent)
            why = f" ({needs.why})" if needs.why else ""
            hints = "; ".join(dict.fromkeys(needs.modules[m] for m in absent))
            missing.append(Missing(key, f"{name!r} needs the Python module(s) {names}{why}", hints))
        for file_key, path in needs.files.items():
            if not Path(path).expanduser().exists():
                missing.append(Missing(file_key, f"{name!r} needs {path!r}, which does not exist", "fix the path"))

    model_folder = Path(config.model.path).expanduser()
    if model_folder.is_dir() and not (model_folder / "config.json").is_file():
        missing.append(Missing(
            "model.path", f"folder {config.model.path!r} holds no config.json (an empty or unfinished download?)",
            "download the model into it again, or point model.path at the folder that holds config.json",
        ))
    elif not model_is_available(config.model.path):
        missing.append(Missing(
            "model.path", f"model {config.model.path!r} is neither a local folder nor in the local Hugging Face cache",
            "download it first and pass its folder, e.g. USERRL_MODEL_PATH=/models/Qwen3-4B",
        ))

    server = getattr(config, "simulator_server", None)
    if server is not None and server.enabled:
        if not model_is_available(server.model):
            missing.append(Missing(
                "simulator_server.model",
                f"simulator model {server.model!r} is neither a local folder nor in the local Hugging Face cache",
                "download it first and pass its folder",
            ))
    elif config.simulator.api_key_env and not env.get(config.simulator.api_key_env):
        missing.append(Missing(
            "simulator.api_key_env", f"environment variable {config.simulator.api_key_env} is not set",
            f"export {config.simulator.api_key_env}=... (the key is read from the environment only)",
        ))
    return missing


def _safe_available(check: Callable[[str], bool], module: str) -> bool:
    try:
        return bool(check(module))
    except (ImportError, ValueError):  # find_spec of a submodule whose parent is missing
        return False


def check_requirements(config: Any, source: str = "recipe", **kwargs: Any) -> None:
    """Raise one :class:`MissingRequirementError` listing everything that is missing."""
    missing = find_missing(config, **kwargs)
    if missing:
        lines = "; ".join(str(m) for m in missing)
        raise MissingRequirementError(f"{source} cannot run on this machine: {lines}")
