"""Names that plugins register, by kind, with the plugin that registered each.

Recipes and datasets refer to plugins only by these names. A lookup of an unknown name raises
one error that lists the registered names of that kind; a second registration of a name raises
one error naming both plugins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from userrl_core.errors import PluginConflictError, UnknownNameError


class Kind(str, enum.Enum):
    ENVIRONMENT = "environment"
    SIMULATOR = "simulator"
    TURN_CREDIT = "turn_credit"
    TRAJECTORY_SCORE = "trajectory_score"
    JUDGE = "judge"
    ROLLOUT_BACKEND = "rollout"
    TRAINING_BACKEND = "training"

    @property
    def label(self) -> str:
        return {
            Kind.ROLLOUT_BACKEND: "rollout backend",
            Kind.TRAINING_BACKEND: "training backend",
            Kind.TURN_CREDIT: "turn-credit method",
            Kind.TRAJECTORY_SCORE: "trajectory-score method",
        }.get(self, self.value)


@dataclass
class Entry:
    kind: Kind
    name: str
    obj: Any
    plugin: str
    description: str = ""
    unavailable_hint: str | None = None  # set when the plugin's optional dependency is missing


class Registry:
    """All registered names. Filled by the plugin manager; read by the core."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Kind, str], Entry] = {}

    def add(self, kind: Kind, name: str, obj: Any, plugin: str, description: str = "") -> Entry:
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugin {plugin!r} registered a {kind.label} with an empty or non-text name")
        key = (kind, name)
        if key in self._entries:
            other = self._entries[key].plugin
            raise PluginConflictError(
                f"{kind.label} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}"
            )
        entry = Entry(kind=kind, name=name, obj=obj, plugin=plugin, description=description)
        self._entries[key] = entry
        return entry

    def remove_plugin(self, plugin: str) -> None:
        """Forget every name of one plugin (used when its registration fails half-way)."""
        for key in [k for k, e in self._entries.items() if e.plugin == plugin]:
            del self._entries[key]

    def entry(self, kind: Kind, name: str, *, key_path: str | None = None) -> Entry:
        try:
            entry = self._entries[(kind, name)]
        except KeyError:
            known = ", ".join(sorted(self.names(kind))) or "none"
            where = f"{key_path}: " if key_path else ""
            raise UnknownNameError(
                f"{where}unknown {kind.label} {name!r}; registered: {known}"
            ) from None
        if entry.unavailable_hint:
            where = f"{key_path}: " if key_path else ""
            raise UnknownNameError(
                f"{where}{kind.label} {name!r} (plugin {entry.plugin!r}) is unavailable on this "
                f"machine: {entry.unavailable_hint}"
            )
        return entry

    def get(self, kind: Kind, name: str, *, key_path: str | None = None) -> Any:
        return self.entry(kind, name, key_path=key_path).obj

    def names(self, kind: Kind) -> list[str]:
        return sorted(n for (k, n) in self._entries if k == kind)

    def entries(self, plugin: str | None = None) -> list[Entry]:
        return [e for e in self._entries.values() if plugin is None or e.plugin == plugin]
