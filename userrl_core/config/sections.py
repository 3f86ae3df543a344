"""Recipe sections that plugins own.

The core schema (:mod:`userrl_core.config.schema`) holds only what the core reads. A plugin
declares a pydantic model for the section it reads, and the recipe loader validates that section
with it, with the same one-line errors naming the dotted key (exit status 2):

- an environment factory's ``settings_model`` owns ``env.<name>`` (checked with the plugin names,
  :func:`userrl_core.config.compose.check_plugin_names`);
- a simulator factory's ``settings_model`` owns ``simulator.<name>``;
- the ``register_settings`` hook owns any other top-level section (``register(section, model)``;
  the stability guard's ``guard``, the fsdp backend's ``ray``).

A section may also name the keys it had before it moved (``renamed``: old dotted key -> key inside
the section); a recipe that still uses one keeps working and gets one warning line naming both.

A plugin reads its validated section with :func:`section_settings`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from pydantic import BaseModel

from userrl_core.config import dotted

if TYPE_CHECKING:
    from userrl_core.registry import Registry

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class SettingsSection:
    """What a plugin registers for a recipe section it owns."""

    model: type[BaseModel]
    renamed: Mapping[str, str] = field(default_factory=dict)  # old dotted recipe key -> key in this section


@dataclass(frozen=True)
class OwnedSection:
    """One plugin-owned section as the loader sees it."""

    key: str  # dotted: "guard", "simulator.<name>"
    model: type[BaseModel]
    plugin: str
    renamed: Mapping[str, str]


def owned_sections(registry: "Registry") -> dict[str, OwnedSection]:
    """Every plugin-owned section except ``env.<name>``, by dotted key."""
    from userrl_core.registry import Kind

    sections: dict[str, OwnedSection] = {}
    for name in registry.names(Kind.SETTINGS):
        entry = registry.entry_or_none(Kind.SETTINGS, name)
        if entry is not None and isinstance(entry.obj, SettingsSection) and not entry.rivals:
            sections[name] = OwnedSection(name, entry.obj.model, entry.plugin, dict(entry.obj.renamed))
    for name in registry.names(Kind.SIMULATOR):
        entry = registry.entry_or_none(Kind.SIMULATOR, name)
        model = getattr(getattr(entry, "obj", None), "settings_model", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            renamed = dict(getattr(entry.obj, "settings_renamed", None) or {})
            sections[f"simulator.{name}"] = OwnedSection(f"simulator.{name}", model, entry.plugin, renamed)
    return sections


_warned: set[str] = set()


def move_renamed_keys(data: dict[str, Any], sections: Mapping[str, OwnedSection]) -> None:
    """Move values given under a section's old keys to their new place, in place, warning once
    per old key. The old key's value wins over one under the new key: only a recipe written by
    hand names an old key, while the new one may come from a packaged default."""
    for section in sections.values():
        for old, inner in section.renamed.items():
            value = dotted.pop(data, old)
            if value is dotted.MISSING:
                continue
            new = f"{section.key}.{inner}"
            if old not in _warned:
                _warned.add(old)
                log.warning("recipe key %s is deprecated and will be removed in the next release; use %s", old, new)
            try:
                dotted.assign(data, new, value, create=True)
            except KeyError:  # something that is not a mapping is in the way: validation reports it
                pass


def section_settings(node: BaseModel, key: str, model: type[M], *, path: str | None = None) -> M:
    """The settings of the plugin-owned section ``key`` under ``node`` (the ``RunConfig`` for a
    top-level section, the ``SimulatorConfig`` for ``simulator.<name>``), as ``model``; the
    model's defaults when the recipe does not name the section. A config built without the
    recipe loader is validated here: a bad value raises ``ConfigError`` naming ``path`` (the
    section's dotted key, ``key`` by default)."""
    from userrl_core.errors import ConfigError

    value = (node.model_extra or {}).get(key)
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump()
    try:
        return model.model_validate(value if value is not None else {})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError("; ".join(_problems(path or key, exc))) from None


def _problems(key: str, exc: Exception) -> list[str]:
    from pydantic import ValidationError

    from userrl_core.config.compose import describe_error

    if not isinstance(exc, ValidationError):
        return [f"{key}: {exc}"]
    problems = []
    for error in exc.errors(include_url=False):
        if error["loc"]:
            problems.append(describe_error({**error, "loc": (*key.split("."), *error["loc"])}))
        else:  # a rule of the whole section: its message names the keys, else it is about the section
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(message if message.startswith(f"{key}.") else f"{key}: {message}")
    return problems


def validate_owned_sections(config: BaseModel, sections: Mapping[str, OwnedSection]) -> None:
    """Validate every plugin-owned section of a ``RunConfig`` in place (each becomes an instance of
    its model; a section the recipe leaves out gets its model's defaults when it has any); a key
    that no installed plugin owns is refused. Raises ``ValueError`` naming every bad dotted key."""
    problems: list[str] = []
    simulator = getattr(config, "simulator", None)
    places = [("", config)] + ([("simulator.", simulator)] if isinstance(simulator, BaseModel) else [])
    for prefix, node in places:
        extra = node.__pydantic_extra__
        if extra is None:
            continue
        for name in list(extra):
            section = sections.get(f"{prefix}{name}")
            if section is None:
                problems.append(f"{prefix}{name}: unknown key (no installed plugin owns this section)")
                continue
            value = extra[name]
            if isinstance(value, BaseModel):
                value = value.model_dump()
            try:
                extra[name] = section.model.model_validate(value if value is not None else {},
                                                           context={"run_config": config})
            except Exception as exc:  # pydantic's ValidationError, or a plugin validator's ValueError
                problems.extend(_problems(section.key, exc))
    chosen = getattr(simulator, "name", None)
    for key, section in sections.items():
        prefix, _, name = key.rpartition(".")
        node = config if not prefix else simulator if (prefix == "simulator" and name == chosen) else None
        if node is None or node.__pydantic_extra__ is None or name in node.__pydantic_extra__:
            continue
        try:
            node.__pydantic_extra__[name] = section.model.model_validate({}, context={"run_config": config})
        except Exception:  # a model with required keys: the plugin reports them when it reads the section
            pass
    if problems:
        raise ValueError("; ".join(problems))
