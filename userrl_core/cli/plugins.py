"""``userrl plugins list [--json]``: every plugin, its distribution, status, hooks and names,
and every name two plugins registered (a conflict: only a run that uses that name stops)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from userrl_core.plugins import PluginInfo, get_plugin_manager
from userrl_core.registry import Entry


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("plugins", help="Inspect installed plugins.")
    actions = parser.add_subparsers(dest="plugins_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="List plugins: status, hooks and registered names.")
    listing.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    listing.set_defaults(func=list_plugins)


def list_plugins(args: argparse.Namespace) -> int:
    manager = get_plugin_manager()
    infos = sorted(manager.plugins.values(), key=lambda p: p.name)
    conflicts = manager.registry.conflicts()
    if args.json:
        listed = [{"kind": e.kind.value, "name": e.name, "plugins": [e.plugin, *(r.plugin for r in e.rivals)],
                   "message": e.conflict_message()} for e in conflicts]
        print(json.dumps({"plugins": [p.as_dict() for p in infos], "conflicts": listed}, indent=2))
    else:
        print(format_table(infos, conflicts))
    return 0


def format_table(infos: list[PluginInfo], conflicts: list[Entry] = ()) -> str:
    """A plain-text table (no colours, stable in pipes), one block per plugin."""
    if not infos:
        return "no plugins installed (entry-point group 'userrl')"
    header = ("PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS")
    rows = [(p.name, p.distribution, p.version, p.status, ", ".join(p.hooks) or "-") for p in infos]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths)) + "  " + cells[4]

    out = [line(header)]
    for info, row in zip(infos, rows):
        out.append(line(row))
        for kind, names in sorted(info.registers.items()):
            out.append(f"    {kind}: {', '.join(names)}")
            for name, description in info.descriptions.get(kind, {}).items():
                out.append(f"      {name}: {description}")
        if info.error:
            out.append(f"    error: {info.error}")
        if info.hint:
            out.append(f"    install: {info.hint}")
        for warning in info.warnings:
            out.append(f"    warning: {warning}")
    if conflicts:
        out += ["", "CONFLICTS (a run that uses one of these names stops):"]
        out += [f"  {entry.conflict_message()}" for entry in conflicts]
    return "\n".join(out)
