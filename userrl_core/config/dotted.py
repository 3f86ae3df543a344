"""Dotted recipe keys (``actor.lr``, ``guard.rules.val_reward_drop.threshold``) on plain nested
mappings: the one walker that the loader, the roll-back changes and the report share."""

from __future__ import annotations

from typing import Any, Mapping

MISSING = object()
"""What :func:`pop` returns, and a ``default`` for :func:`lookup`, when a key is not there."""
_REQUIRED = object()


def lookup(data: Mapping[str, Any], dotted: str, default: Any = _REQUIRED) -> Any:
    """The value at ``dotted``; ``default`` when a part is missing (``KeyError`` without one)."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _REQUIRED:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def pop(data: dict[str, Any], dotted: str) -> Any:
    """Remove and return the value at ``dotted`` (and the mappings it leaves empty on the way);
    ``MISSING`` when it is not there."""
    *parents, leaf = dotted.split(".")
    node = lookup(data, ".".join(parents), None) if parents else data
    if not isinstance(node, dict) or leaf not in node:
        return MISSING
    value = node.pop(leaf)
    while parents and lookup(data, ".".join(parents), None) == {}:
        *above, last = parents
        (lookup(data, ".".join(above)) if above else data).pop(last)
        parents = above
    return value


def assign(data: dict[str, Any], dotted: str, value: Any, *, create: bool = False) -> None:
    """Set the value at ``dotted``. Without ``create`` every part must exist (``KeyError``);
    with it, missing mappings on the way are made."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        if create and isinstance(node, dict) and part not in node:
            node[part] = {}
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise KeyError(dotted)
        node = node[part]
    if not create and leaf not in node:
        raise KeyError(dotted)
    node[leaf] = value
