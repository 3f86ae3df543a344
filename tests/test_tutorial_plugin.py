"""docs/plugins.md's tutorial, done for real: the NumberGuess package from tests/fixtures is
built and pip-installed into a temporary folder, and the CLI (a subprocess) lists it and plays
one episode of its environment. The doc's code blocks must equal the fixture files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.distributions import REPO_ROOT, TUTORIAL_PACKAGE, cli

DOC = REPO_ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.M | re.S)


def doc_files() -> dict[str, str]:
    return {path: body for _, path, body in FENCE.findall(DOC.read_text(encoding="utf-8"))}


def test_doc_code_blocks_equal_the_fixture_package():
    files = doc_files()
    fixture = {str(p.relative_to(TUTORIAL_PACKAGE)): p.read_text(encoding="utf-8")
               for p in sorted(TUTORIAL_PACKAGE.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}
    assert set(files) == set(fixture)
    for path, body in fixture.items():
        assert files[path] == body, f"docs/plugins.md block for {path} differs from tests/fixtures"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """pip-install a copy of the package (copied so the build leaves the repository clean)."""
    work = tmp_path_factory.mktemp("tutorial")
    source = work / "userrl-numberguess"
    shutil.copytree(TUTORIAL_PACKAGE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(target.glob("userrl_numberguess-0.1.0.dist-info"))
    return target


def test_installed_plugin_is_listed(installed):
    result = cli("plugins", "list", "--json", pythonpath=[installed])
    assert result.returncode == 0, result.stderr
    plugin = next(p for p in json.loads(result.stdout)["plugins"] if p["name"] == "numberguess")
    assert plugin["distribution"] == "userrl-numberguess" and plugin["version"] == "0.1.0"
    assert plugin["status"] == "ok"
    assert plugin["hooks"] == ["register_environments"]
    assert plugin["registers"] == {"environment": ["NumberGuess"]}

    table = cli("plugins", "list", pythonpath=[installed]).stdout
    assert "    environment: NumberGuess" in table


def test_one_episode_through_simulate(installed):
    result = cli("simulate", "NumberGuess", "--simulator", "none", "--task", "guess-37",
                 pythonpath=[installed], stdin="fifty\n50\n25\n37\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "task guess-37 (NumberGuess, numberguess)" in out
    assert "[user] I am thinking of a whole number from 1 to 100." in out
    assert "  reply: Please guess a whole number." in out
    assert "turn 2: action '50'\n  reply: Lower.\n  reward: 0.0  done: False" in out
    assert "turn 3: action '25'\n  reply: Higher.\n  reward: 0.0  done: False" in out
    assert "turn 4: action '37'\n  reply: Right!\n  reward: 1.0  done: True" in out
    assert 'metrics: {"guesses": 3.0, "solved": 1.0}' in out


def test_simulate_with_an_explicit_task_file_and_early_finish(installed, tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": "small", "env_name": "NumberGuess", "low": 1, "high": 3, "secret": 2}]))
    result = cli("simulate", "NumberGuess", "--simulator", "none", "--tasks", str(tasks),
                 pythonpath=[installed], stdin="3\n/finish\n")
    assert result.returncode == 0, result.stderr
    assert "turn 1: action '3'\n  reply: Lower." in result.stdout
    assert "turn 2: finish ''\n  reply: You gave up.\n  reward: 0.0  done: True" in result.stdout
    assert 'metrics: {"guesses": 1.0, "solved": 0.0}' in result.stdout


def test_a_bad_task_row_names_the_file_and_row(installed, tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": "bad", "env_name": "NumberGuess", "low": 1, "high": 3, "secret": 9}]))
    result = cli("simulate", "NumberGuess", "--simulator", "none", "--tasks", str(tasks),
                 pythonpath=[installed], stdin="")
    assert result.returncode == 2
    assert f"{tasks} row 0" in result.stderr and "secret must be a whole number in [1, 3]" in result.stderr


def test_unknown_environment_lists_the_registered_ones(installed):
    result = cli("simulate", "NumberGuesss", "--simulator", "none", pythonpath=[installed], stdin="")
    assert result.returncode == 2
    assert "unknown environment 'NumberGuesss'" in result.stderr and "NumberGuess" in result.stderr
