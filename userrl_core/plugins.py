"""The plugin manager: loads every plugin from the ``userrl`` entry-point group.

Built-in plugins (``plugins/``, the package ``userrl_plugins``) and third-party plugins load
the same way. Every hook is called through pluggy's own hook calling, one plugin at a time
(pluggy's subset hook callers), so a name can be traced to its plugin, one broken plugin cannot
take the others down, and pluggy's hookimpl options hold: ``tryfirst`` / ``trylast`` order the
plugins, a ``wrapper=True`` implementation wraps its own plugin's implementation, and a function
that is not marked ``@hookimpl`` is never called (``plugins list`` warns about it):

- a plugin that fails to import or to register is recorded as ``failed`` with its
  distribution, version and error, and skipped (``USERRL_STRICT_PLUGINS=1`` makes it fatal);
- a plugin that declares ``USERRL_REQUIRES = {"module": "install hint"}`` and misses one of
  those modules is ``unavailable``: its names stay listed, and using one says how to install it;
- ``USERRL_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name;
- two plugins registering the same name make it *contested*: every command still loads, ``userrl
  plugins list`` and ``userrl doctor`` show the conflict, and only a run that needs that name
  stops with one error naming both plugins and ``USERRL_DISABLE_PLUGINS`` (which one would win
  is not something to guess).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from userrl_core import hookspecs
from userrl_core.errors import UserError
from userrl_core.registry import Kind, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "userrl"
REGISTRATION_HOOKS = (
    "register_environments",
    "register_simulators",
    "register_rewards",
    "register_backends",
    "register_settings",
)
HOOK_NAMES = tuple(name for name, obj in vars(hookspecs).items() if hasattr(obj, f"{hookspecs.PROJECT}_spec"))


def settings_section(section: str, model: Any, renamed: dict[str, str] | None) -> Any:
    """Check what ``register_settings`` was given: a top-level recipe key the core schema does
    not use, and a pydantic model."""
    from pydantic import BaseModel

    from userrl_core.config.schema import RunConfig
    from userrl_core.config.sections import SettingsSection

    if not isinstance(section, str) or not section.isidentifier():
        raise ValueError(f"register_settings: section {section!r} is not a top-level recipe key")
    if section in RunConfig.model_fields:
        raise ValueError(f"register_settings: section {section!r} belongs to the core recipe schema")
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"register_settings: the model of section {section!r} is not a pydantic model class")
    return SettingsSection(model=model, renamed=dict(renamed or {}))


class PluginLoadError(UserError):
    """Raised in strict mode when a plugin fails to load."""


@dataclass
class PluginInfo:
    """What ``userrl plugins list`` shows for one plugin."""

    name: str
    module: str
    distribution: str
    version: str
    status: str = "ok"  # ok | unavailable | failed | disabled
    error: str | None = None
    hint: str | None = None
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)
    descriptions: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> name -> description
    warnings: list[str] = field(default_factory=list)  # e.g. a hook-named function without @hookimpl

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "hint": self.hint,
            "hooks": self.hooks,
            "registers": self.registers,
            "descriptions": self.descriptions,
            "warnings": self.warnings,
        }


def _env_list(var: str) -> set[str]:
    return {p.strip() for p in os.environ.get(var, "").split(",") if p.strip()}


def _strict() -> bool:
    return os.environ.get("USERRL_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginManager:
    """Loads plugins, fills a :class:`Registry`, and calls lifecycle hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}

    # ---------------------------------------------------------------- loading

    def load_entry_points(self) -> None:
        disabled = _env_list("USERRL_DISABLE_PLUGINS")
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.plugins:
                continue  # the same distribution seen twice on sys.path
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist else "?",
                version=dist.version if dist else "?",
            )
            self.plugins[ep.name] = info
            if ep.name in disabled:
                info.status = "disabled"
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                self._fail(info, exc)
                continue
            self.add_plugin(obj, info)

    def add_plugin(self, obj: Any, info: PluginInfo | None = None) -> PluginInfo:
        """Register one plugin object (a module or an instance) and run its registrations."""
        if info is None:
            name = getattr(obj, "__name__", type(obj).__name__)
            info = PluginInfo(name=name, module=name, distribution="(in-process)", version="")
            self.plugins[name] = info
        missing = {
            mod: hint
            for mod, hint in (getattr(obj, "USERRL_REQUIRES", None) or {}).items()
            if importlib.util.find_spec(mod) is None
        }
        try:
            self.pm.register(obj, name=info.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._unregister_quietly(info.name)
            self._fail(info, exc)
            return info
        info.hooks = sorted(
            hc.name for hc in self.pm.get_hookcallers(obj) or [] if not hc.name.startswith("_")
        )
        info.warnings = [
            f"{name} is not marked @hookimpl and is not called"
            for name in HOOK_NAMES
            if callable(getattr(obj, name, None)) and name not in info.hooks
        ]
        for line in info.warnings:
            log.warning("plugin %r: %s", info.name, line)
        try:
            self._run_registrations(obj, info)
        except Exception as exc:
            self.registry.remove_plugin(info.name)
            self._unregister_quietly(info.name)
            info.registers, info.descriptions = {}, {}
            self._fail(info, exc)
            return info
        if missing:
            info.status = "unavailable"
            info.hint = "; ".join(f"missing {m}: {h}" for m, h in sorted(missing.items()))
            for entry in self.registry.entries(info.name):
                entry.unavailable_hint = info.hint
        return info

    def _one_plugin(self, hook_name: str, obj: Any) -> Any:
        """Pluggy's caller of ``hook_name`` restricted to the plugin ``obj``."""
        others = [p for p in self.pm.get_plugins() if p is not obj]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _run_registrations(self, obj: Any, info: PluginInfo) -> None:
        for hook_name in REGISTRATION_HOOKS:
            if hook_name in info.hooks:
                self._one_plugin(hook_name, obj)(register=self._make_register(hook_name, info))

    def _make_register(self, hook_name: str, info: PluginInfo) -> Callable[..., None]:
        def record(kind: Kind, name: str, obj: Any, description: str) -> None:
            self.registry.add(kind, name, obj, plugin=info.name, description=description)
            info.registers.setdefault(kind.value, []).append(name)
            if description:
                info.descriptions.setdefault(kind.value, {})[name] = str(description)

        if hook_name == "register_environments":
            return lambda name, factory, description="": record(Kind.ENVIRONMENT, name, factory, description)
        if hook_name == "register_simulators":
            return lambda name, factory, description="": record(Kind.SIMULATOR, name, factory, description)
        if hook_name == "register_settings":
            def register_section(section: str, model: Any, description: str = "",
                                 renamed: dict[str, str] | None = None) -> None:
                record(Kind.SETTINGS, section, settings_section(section, model, renamed), description)

            return register_section

        allowed = (
            {"turn_credit": Kind.TURN_CREDIT, "trajectory_score": Kind.TRAJECTORY_SCORE}
            if hook_name == "register_rewards"
            else {"rollout": Kind.ROLLOUT_BACKEND, "training": Kind.TRAINING_BACKEND}
        )

        def register(kind: str, name: str, obj: Any, description: str = "") -> None:
            if kind not in allowed:
                raise ValueError(f"{hook_name}: unknown kind {kind!r}; expected one of {sorted(allowed)}")
            record(allowed[kind], name, obj, description)

        return register

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        info.status = "failed"
        info.error = _short_error(exc)
        log.debug("plugin %s failed:\n%s", info.name, "".join(traceback.format_exception(exc)))
        if _strict():
            raise PluginLoadError(
                f"plugin {info.name!r} ({info.distribution} {info.version}) failed to load: {info.error}"
            ) from exc
        log.warning("plugin %r (%s %s) failed to load and is skipped: %s",
                    info.name, info.distribution, info.version, info.error)

    def _unregister_quietly(self, name: str) -> None:
        try:
            self.pm.unregister(name=name)
        except Exception:  # pragma: no cover - it was never registered
            pass

    # ---------------------------------------------------------------- lifecycle

    def call_lifecycle(self, hook_name: str, **kwargs: Any) -> list[str]:
        """Call a lifecycle hook on every plugin, one plugin at a time, in pluggy's order
        (``tryfirst`` first, ``trylast`` last, otherwise the last registered first).

        Each call goes through pluggy (a plugin's ``wrapper=True`` implementation wraps its own
        implementation). A plugin that raises is logged and reported back (so the run summary
        can list it); it does not stop the run or the other plugins' calls unless
        ``USERRL_STRICT_PLUGINS=1``. Returns the error lines.
        """
        errors: list[str] = []
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        plain = [i for i in impls if not (i.wrapper or i.hookwrapper)]
        wrappers = [i for i in impls if i.wrapper or i.hookwrapper]
        order: list[Any] = []
        for impl in [*reversed(plain), *reversed(wrappers)]:  # pluggy calls its list back to front
            if all(impl.plugin is not seen for seen in order):
                order.append(impl.plugin)
        for plugin in order:
            try:
                self._one_plugin(hook_name, plugin)(**kwargs)
            except Exception as exc:
                line = f"plugin {self.pm.get_name(plugin)!r} raised in {hook_name}: {_short_error(exc)}"
                if _strict():
                    raise
                log.error(line)
                errors.append(line)
        return errors


_default: PluginManager | None = None


def get_plugin_manager(*, fresh: bool = False) -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _default
    if _default is None or fresh:
        manager = PluginManager()
        manager.load_entry_points()
        _default = manager
    return _default
