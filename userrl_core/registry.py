"""Names that plugins register, by kind, with the plugin that registered each.

Recipes and datasets refer to plugins only by these names. A lookup of an unknown name raises
one error that lists the registered names of that kind. A name registered by two plugins is
*contested*: it stays listed with both plugins (``userrl plugins list`` and ``userrl doctor``
show it), and only a lookup of that name fails, naming both plugins and how to disable one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from userrl_core.errors import PluginConflictError, UnknownNameError


class Kind(str, enum.Enum):
    ENVIRONMENT = "environment"
    SIMULATOR = "simulator"
    TURN_CREDIT = "turn_credit"
    TRAJECTORY_SCORE = "trajectory_score"
    ROLLOUT_BACKEND = "rollout"
    TRAINING_BACKEND = "training"
    SETTINGS = "settings"  # a recipe section a plugin owns (register_settings)

    @property
    def label(self) -> str:
        return {
            Kind.ROLLOUT_BACKEND: "rollout backend",
            Kind.TRAINING_BACKEND: "training backend",
            Kind.TURN_CREDIT: "turn-credit method",
            Kind.TRAJECTORY_SCORE: "trajectory-score method",
            Kind.SETTINGS: "settings section",
        }.get(self, self.value)


@dataclass
class Entry:
    kind: Kind
    name: str
    obj: Any
    plugin: str
    description: str = ""
    unavailable_hint: str | None = None  # set when the plugin's optional dependency is missing
    rivals: list["Entry"] = field(default_factory=list)  # later registrations of the same name

    def conflict_message(self) -> str:
        plugins = [self.plugin, *(r.plugin for r in self.rivals)]
        names = " and ".join(repr(p) for p in plugins)
        return (f"{self.kind.label} {self.name!r} is registered by {len(plugins)} plugins: {names}; "
                f"uninstall one, or disable it with USERRL_DISABLE_PLUGINS={plugins[-1]}")


class Registry:
    """All registered names. Filled by the plugin manager; read by the core."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Kind, str], Entry] = {}

    def add(self, kind: Kind, name: str, obj: Any, plugin: str, description: str = "") -> Entry:
        """Record a name. A name that another plugin already holds becomes contested (see
        :meth:`conflicts`); the first registration stays the entry, and looking it up fails."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugin {plugin!r} registered a {kind.label} with an empty or non-text name")
        key = (kind, name)
        entry = Entry(kind=kind, name=name, obj=obj, plugin=plugin, description=description)
        if key in self._entries:
            first = self._entries[key]
            if plugin in (first.plugin, *(r.plugin for r in first.rivals)):
                raise ValueError(f"plugin {plugin!r} registered the {kind.label} {name!r} twice")
            first.rivals.append(entry)
        else:
            self._entries[key] = entry
        return entry

    def remove_plugin(self, plugin: str) -> None:
        """Forget every name of one plugin (used when its registration fails half-way)."""
        for key, entry in list(self._entries.items()):
            entry.rivals = [r for r in entry.rivals if r.plugin != plugin]
            if entry.plugin == plugin:
                if entry.rivals:  # the next registration of the name takes its place
                    heir, *rest = entry.rivals
                    heir.rivals = rest
                    self._entries[key] = heir
                else:
                    del self._entries[key]

    def conflicts(self) -> list[Entry]:
        """Entries that more than one plugin registered."""
        return [e for e in self._entries.values() if e.rivals]

    def entry(self, kind: Kind, name: str, *, key_path: str | None = None) -> Entry:
        try:
            entry = self._entries[(kind, name)]
        except KeyError:
            known = ", ".join(sorted(self.names(kind))) or "none"
            where = f"{key_path}: " if key_path else ""
            raise UnknownNameError(
                f"{where}unknown {kind.label} {name!r}; registered: {known}"
            ) from None
        if entry.rivals:
            where = f"{key_path}: " if key_path else ""
            raise PluginConflictError(f"{where}{entry.conflict_message()}")
        if entry.unavailable_hint:
            where = f"{key_path}: " if key_path else ""
            raise UnknownNameError(
                f"{where}{kind.label} {name!r} (plugin {entry.plugin!r}) is unavailable on this "
                f"machine: {entry.unavailable_hint}"
            )
        return entry

    def entry_or_none(self, kind: Kind, name: str) -> Entry | None:
        """The entry of a name without any check (listing, settings models); None when unknown."""
        return self._entries.get((kind, name))

    def get(self, kind: Kind, name: str, *, key_path: str | None = None) -> Any:
        return self.entry(kind, name, key_path=key_path).obj

    def names(self, kind: Kind) -> list[str]:
        return sorted(n for (k, n) in self._entries if k == kind)

    def entries(self, plugin: str | None = None) -> list[Entry]:
        return [e for e in self._entries.values() if plugin is None or e.plugin == plugin]
