"""Validating a recipe's ``env.<name>`` mapping inside an environment plugin: the one helper the
built-in gyms share, so a bad key is always one ConfigError naming ``env.<name>.<key>``."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from userrl_core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def parse_env_settings(model: type[M], settings: Any, key: str) -> M:
    """``settings`` (a mapping, ``None`` or already a ``model``) validated as ``model``; ``key`` is
    the recipe section (``"env.FunctionGym"``)."""
    if isinstance(settings, model):
        return settings
    try:
        return model.model_validate(dict(settings or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{key}.{where}: {err['msg']}") from None
