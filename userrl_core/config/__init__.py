"""Recipes: Hydra composition and the pydantic schema they are validated against."""

from userrl_core.config.changes import apply_changes
from userrl_core.config.compose import check_plugin_names, compose_recipe, load_recipe, validate_config
from userrl_core.config.schema import RunConfig

__all__ = ["RunConfig", "apply_changes", "check_plugin_names", "compose_recipe", "load_recipe", "validate_config"]
