"""Recipe loading: Hydra's compose API, then pydantic validation, then plugin-name checks.

A recipe is a YAML file anywhere on disk. Its ``defaults:`` list may pull config groups that
ship inside this package (``simulator: local``, ``backend: transformers``, ...): the package's
``conf/`` folder is put on Hydra's search path. Hydra is used only to compose: no
``@hydra.main``, no change of working directory, no ``outputs/`` folder.

Command-line overrides are Hydra overrides. A dotted key (``trainer.total_epochs=3``) is set
whether or not the recipe mentions it (it is passed as ``++key=value``); a bare key that names a
config group (``simulator=dashscope``) selects that group's option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from userrl_core.config.schema import RunConfig
from userrl_core.errors import ConfigError
from userrl_core.redaction import check_no_literal_secrets, protect_recipe_variables, redact

CONF_DIR = Path(__file__).parent / "conf"


def _normalise_override(override: str) -> str:
    if "=" not in override or override[0] in "+~":
        return override
    key = override.split("=", 1)[0]
    return f"++{override}" if "." in key else override


def compose_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose a recipe with its overrides into a plain dict (not yet validated)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe = Path(path).expanduser().resolve()
    if not recipe.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    if recipe.suffix not in {".yaml", ".yml"}:
        raise ConfigError(f"{path}: a recipe is a .yaml file")
    hydra_overrides = [f"hydra.searchpath=[file://{CONF_DIR}]"]
    hydra_overrides += [_normalise_override(o) for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(recipe.parent), version_base=None, job_name="userrl"):
            cfg = compose(config_name=recipe.stem, overrides=hydra_overrides)
        data = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{path}: {message}") from None
    except Exception as exc:  # yaml scanner errors and the like
        message = " ".join(str(exc).split())
        raise ConfigError(f"{path}: cannot read recipe: {message}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections")
    data.pop("hydra", None)
    return data


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:  # a rule across sections: its message names the keys; the input is the whole recipe
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {error['msg']} (got {redact(repr(error.get('input')))})"


def validate_config(data: dict[str, Any], source: str = "recipe") -> RunConfig:
    """Validate a composed recipe; the error names every bad dotted key and the file. A recipe
    that holds an API key itself is refused first (the message never repeats the value), and
    the values of the variables it names as keys are redacted from then on."""
    check_no_literal_secrets(data, source)
    protect_recipe_variables(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise ConfigError(f"{source}: {problems}") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and validate a recipe. Plugin names are checked by :func:`check_plugin_names`."""
    return validate_config(compose_recipe(path, overrides), source=str(path))


def plugin_references(config: RunConfig) -> list[tuple[Any, str, str]]:
    """Every (kind, name, recipe key) the config refers to."""
    from userrl_core.registry import Kind

    names = [
        (Kind.SIMULATOR, config.simulator.name, "simulator.name"),
        (Kind.ROLLOUT_BACKEND, config.rollout.backend, "rollout.backend"),
        (Kind.TRAINING_BACKEND, config.actor.backend, "actor.backend"),
        (Kind.TURN_CREDIT, config.algorithm.turn_credit, "algorithm.turn_credit"),
        (Kind.TRAJECTORY_SCORE, config.algorithm.trajectory_score, "algorithm.trajectory_score"),
    ]
    return names + [(Kind.ENVIRONMENT, env_name, f"env.{env_name}") for env_name in config.env]


def check_plugin_names(
    config: RunConfig, registry: Any, source: str = "recipe", *, allow_unavailable: bool = False
) -> None:
    """Every plugin name the config uses must be registered (and available, unless
    ``allow_unavailable``: a dry run plans a GPU recipe on a CPU machine and reports it)."""
    from userrl_core.errors import UnknownNameError

    for kind, name, key in plugin_references(config):
        if allow_unavailable and name in registry.names(kind):
            continue
        try:
            registry.entry(kind, name, key_path=key)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{source}: {exc}") from None
