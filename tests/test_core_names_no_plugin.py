"""The core never names a plugin (docs/architecture.md): no string in ``userrl_core/`` (docstrings
and comments aside) holds a name that the built-in plugins register, nor a plugin's entry-point
or package name. Defaults that name a plugin live in the packaged recipe file
``userrl_core/config/conf/plugin_defaults.yaml`` (YAML, not scanned). Plugins declare what the
core needs to know (requirements, settings sections, metrics) instead."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
from pathlib import Path

from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind

CORE = Path(__file__).resolve().parents[1] / "userrl_core"
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

ORDINARY_WORDS = {"local", "mean", "sum", "Sum", "transformers", "rewards", "backends", "simulators", "lifecycle"}
"""Names that are also ordinary words or a library's name ("reward/mean", "from transformers"):
checked only as a whole string (``"local"``), not inside longer text."""
FOLDER_NAMES = {"hf"}
"""A checkpoint's Hugging Face-format folder is called ``hf``; it is not the ``hf`` simulator."""


def plugin_names() -> set[str]:
    manager = get_plugin_manager()
    names: set[str] = set()
    for kind in Kind:
        if kind is not Kind.SETTINGS:  # section keys ('guard') are recipe keys the core does not read
            names |= set(manager.registry.names(kind))
    names |= {ep.name for ep in md.distribution("userrl").entry_points if ep.group == "userrl"}
    names |= {p.name for p in PLUGINS.iterdir() if (p / "__init__.py").is_file()}
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:  # module/class/function docstrings and bare string statements
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    ids.add(id(stmt.value))
    return ids


def offending_strings(names: set[str], root: Path = CORE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
                continue
            for name in names - FOLDER_NAMES:
                whole = node.value == name
                inside = name not in ORDINARY_WORDS and re.search(
                    rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", node.value)
                if whole or inside:
                    found.append(f"userrl_core/{relative}:{node.lineno}: {name!r} in {node.value[:60]!r}")
    return found


def test_the_names_are_collected_from_the_plugin_manager():
    names = plugin_names()
    assert {"IntentionGym", "sglang", "fsdp", "local", "Equalized", "intentiongym", "backend-fsdp"} <= names


def test_no_plugin_or_gym_name_in_the_core():
    assert offending_strings(plugin_names()) == []


def test_the_scan_finds_a_name_where_one_is(tmp_path):
    """The scanner itself: a branch on a plugin name is caught, a docstring mention is not."""
    core = tmp_path / "userrl_core"
    core.mkdir()
    (core / "x.py").write_text('"""Mentions sglang in a docstring."""\nif backend == "sglang":\n    pass\n'
                               'LABEL = f"val-core/IntentionGym/{x}"\n')
    found = offending_strings({"sglang", "IntentionGym", "local"}, root=core)
    assert [f.split(":")[1] for f in found] == ["2", "4"]
