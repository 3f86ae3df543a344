"""Paths and pre-flight: a recipe's input files are read from the recipe's folder (overrides from
the current folder), ``--dry-run`` opens every task file the run will, and a run that fails before
its first step still leaves ``summary.json`` and ``report.md`` saying why."""

from __future__ import annotations

import json

import yaml

from fixtures.distributions import REPO_ROOT, cli
from userrl_core.config import load_recipe

QUICKSTART = REPO_ROOT / "recipes" / "quickstart.yaml"


def test_recipe_paths_are_relative_to_the_recipe_and_overrides_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_recipe(QUICKSTART)
    assert config.data.train_files == [str(REPO_ROOT / "recipes" / "../data/intentiongym/userrl_splits/train.parquet")]
    overridden = load_recipe(QUICKSTART, ["data.train_files=[mine.json]"])
    assert overridden.data.train_files == ["mine.json"]  # the shell's folder: read as given
    assert overridden.data.val_files == config.data.val_files
    assert config.model.path == "builtin:smollm2-135m-instruct"  # not a path: left alone


def test_dry_run_of_the_quickstart_from_another_folder(tmp_path):
    result = cli("run", str(QUICKSTART), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train tasks: " in result.stdout and "unknown" not in result.stdout.split("train tasks: ")[1][:10]


def test_dry_run_opens_the_validation_files_too(tmp_path):
    result = cli("run", str(QUICKSTART), "--dry-run", "data.val_files=[missing_val.parquet]", cwd=tmp_path)
    assert result.returncode == 2
    assert "task file missing_val.parquet does not exist" in result.stderr


def test_a_run_that_fails_while_being_built_leaves_summary_and_report(tmp_path, tiny_model_dir):
    tasks = tmp_path / "tasks.json"
    long_prompt = [{"role": "user", "content": "word " * 200}]
    detail = {"description": "Duration of the trip", "importance": 3, "options": ["a week"]}
    tasks.write_text(json.dumps([{"id": "long-1", "env_name": "IntentionGym", "prompt": long_prompt,
                                  "task": "Plan a trip", "missing_details": [detail]}]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": ["tasks.json"], "train_batch_size": 1, "max_prompt_length": 64},
        "rollout": {"n": 2},
        "actor": {"ppo_mini_batch_size": 1},
        "trainer": {"device": "cpu", "total_training_steps": 1, "run_dir": str(tmp_path / "run")},
        "logging": {"progress": False},
    }))
    result = cli("run", str(recipe), cwd=tmp_path, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("userrl: error:")]
    assert f"{tasks} row 0: the prompt is" in line and "longer than data.max_prompt_length (64)" in line
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "max_prompt_length" in summary["error"] and summary["steps"] == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**Status: failed**" in report and "max_prompt_length" in report
