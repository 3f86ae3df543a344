"""Recipe loading: Hydra's compose API, then pydantic validation, then plugin-name checks.

A recipe is a YAML file anywhere on disk. Its ``defaults:`` list may pull config groups that
ship inside this package (``simulator: local``, ``backend: transformers``, ...): the package's
``conf/`` folder is put on Hydra's search path. Hydra is used only to compose: no
``@hydra.main``, no change of working directory, no ``outputs/`` folder.

Command-line overrides are Hydra overrides. A dotted key (``trainer.total_epochs=3``) is set
whether or not the recipe mentions it (it is passed as ``++key=value``); a bare key that names a
config group (``simulator=dashscope``) selects that group's option.

Input files named in a recipe (``data.train_files``, ``data.val_files``, and ``model.path`` /
``model.tokenizer_path`` when they name a folder next to the recipe) are read relative to the
recipe file's folder, so ``userrl run /abs/path/recipes/quickstart.yaml`` works from any folder;
the same keys given as command-line overrides are relative to the current folder, like any path
typed in a shell. Output folders (``trainer.default_local_dir``, ``trainer.run_dir``) stay
relative to the current folder.
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
    resolve_recipe_paths(data, recipe.parent, overridden=_override_keys(overrides))
    return data


RECIPE_FILE_KEYS = ("data.train_files", "data.val_files")
RECIPE_FOLDER_KEYS = ("model.path", "model.tokenizer_path")


def _override_keys(overrides: list[str] | tuple[str, ...]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def _relative_to(folder: Path, value: Any, *, only_if_exists: bool = False) -> Any:
    if not isinstance(value, str) or not value or ":" in value.split("/", 1)[0]:
        return value  # not a path, or 'builtin:...' / a URL
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return value
    resolved = folder / candidate
    if only_if_exists and not resolved.exists():
        return value  # e.g. a hub id such as Qwen/Qwen3-4B
    return str(resolved)


def resolve_recipe_paths(data: dict[str, Any], folder: Path, overridden: set[str] = frozenset()) -> None:
    """Make the recipe's relative input paths relative to ``folder`` (the recipe's), in place;
    keys given as overrides are left for the current folder."""
    for dotted in (*RECIPE_FILE_KEYS, *RECIPE_FOLDER_KEYS):
        if dotted in overridden:
            continue
        section, key = dotted.split(".")
        node = data.get(section)
        if not isinstance(node, dict) or node.get(key) is None:
            continue
        value = node[key]
        folder_key = dotted in RECIPE_FOLDER_KEYS
        if isinstance(value, list):
            node[key] = [_relative_to(folder, v, only_if_exists=folder_key) for v in value]
        else:
            node[key] = _relative_to(folder, value, only_if_exists=folder_key)


def describe_error(error: dict[str, Any]) -> str:
    if not error["loc"]:  # a rule across sections: its message names the keys; the input is the whole recipe
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {error['msg']} (got {redact(repr(error.get('input')))})"


def validate_config(data: dict[str, Any], source: str = "recipe", *, registry: Any = None) -> RunConfig:
    """Validate a composed recipe; the error names every bad dotted key and the file. A recipe
    that holds an API key itself is refused first (the message never repeats the value), and
    the values of the variables it names as keys are redacted from then on. Plugin-owned
    sections are checked against ``registry`` (default: the installed plugins)."""
    check_no_literal_secrets(data, source)
    protect_recipe_variables(data)
    try:
        return RunConfig.model_validate(data, context={"registry": registry} if registry is not None else None)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors(include_url=False))
        raise ConfigError(f"{source}: {problems}") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and validate a recipe. Plugin names are checked by :func:`check_plugin_names`."""
    return validate_config(compose_recipe(path, overrides), source=str(path))


def plugin_references(config: RunConfig) -> list[tuple[Any, str, str]]:
    """Every (kind, name, recipe key) the config refers to."""
    from userrl_core.registry import Kind
    from userrl_core.types import NO_SIMULATOR

    simulator = [] if config.simulator.name == NO_SIMULATOR else [(Kind.SIMULATOR, config.simulator.name, "simulator.name")]
    names = simulator + [
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
    ``allow_unavailable``: a dry run plans a GPU recipe on a CPU machine and reports it), and
    every ``env.<name>`` mapping must satisfy that environment's ``settings_model``."""
    from userrl_core.errors import UnknownNameError
    from userrl_core.registry import Kind

    for kind, name, key in plugin_references(config):
        if allow_unavailable and name in registry.names(kind):
            continue
        try:
            registry.entry(kind, name, key_path=key)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{source}: {exc}") from None
    for env_name, settings in config.env.items():
        if env_name in registry.names(Kind.ENVIRONMENT):
            check_plugin_settings(registry.entry_or_none(Kind.ENVIRONMENT, env_name), settings,
                                  f"env.{env_name}", source)


def check_plugin_settings(entry: Any, settings: dict[str, Any], key: str, source: str) -> None:
    """Validate a plugin-owned recipe section against the pydantic ``settings_model`` its
    registered object declares (nothing to check without one); errors name the dotted key."""
    model = getattr(getattr(entry, "obj", None), "settings_model", None)
    if model is None:
        return
    try:
        model.model_validate(dict(settings or {}))
    except ValidationError as exc:
        problems = "; ".join(describe_error({**e, "loc": (key, *e["loc"])}) for e in exc.errors(include_url=False))
        raise ConfigError(f"{source}: {problems}") from None
