"""docs/plugins.md documents every hook with its exact parameters, when it is called and what it
returns; docs/recipes.md carries the key reference generated from the schema."""

from __future__ import annotations

import inspect
import re

import pytest

from fixtures.distributions import REPO_ROOT
from userrl_core import hookspecs
from userrl_core.cli.keys import END, START, markdown_table

PLUGINS_DOC = (REPO_ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
RECIPES_DOC = (REPO_ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")

HOOKS = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if getattr(fn, "userrl_spec", None) is not None
)


def hook_section(name: str) -> tuple[str, str]:
    """(heading signature, section text) of a hook in docs/plugins.md."""
    match = re.search(rf"^#+ `{name}\(([^)]*)\)`\n(.*?)(?=^#+ )", PLUGINS_DOC, re.M | re.S)
    assert match, f"hook {name} is not documented in docs/plugins.md"
    return match.group(1), match.group(2)


def test_hookspecs_are_found():
    assert {"register_environments", "register_simulators", "register_rewards", "register_backends",
            "on_run_start", "on_step_end", "on_run_end"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_its_parameters(name):
    signature, section = hook_section(name)
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    assert [p.strip() for p in signature.split(",") if p.strip()] == params
    assert "**When**" in section and "**Returns**" in section
    for param in params:
        assert re.search(rf"^\s+- `{param}`: \S", section, re.M), f"{name}: parameter {param} is not described"


def test_recipe_key_reference_is_up_to_date():
    start, end = RECIPES_DOC.index(START), RECIPES_DOC.index(END)
    embedded = RECIPES_DOC[start + len(START):end].strip()
    assert embedded == markdown_table(), "run `userrl keys --update docs/recipes.md`"


def test_every_key_in_the_userrl_mapping_exists():
    from userrl_core.cli.keys import iter_keys

    known = {key for key, *_ in iter_keys()}
    section = RECIPES_DOC[RECIPES_DOC.index("## Moving a UserRL"):RECIPES_DOC.index("## Every key")]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) > 30
    named = set()
    for cells in rows:
        for token in re.findall(r"`([a-z_]+\.[a-z_.]+)", cells[1]):
            named.add(token)
    assert named, "no keys found in the mapping table"
    assert named <= known, f"keys in docs/recipes.md that the schema lacks: {sorted(named - known)}"
