"""Mixed-gym training and evaluation on UserRL's mixed files: rows of gyms that are not installed
skipped and counted (log, summary, report), validation per data source, the report's per-gym
curves, ``userrl eval``'s per-gym score table, and a FunctionGym-only run that builds no
simulator. Tiny random model and the embedded ``hf`` simulator on it, so every path is real
and fast."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from userrl_core.config import validate_config
from userrl_core.errors import ConfigError
from userrl_core.training.evaluate import evaluate
from userrl_core.training.trainer import run_training

ROOT = Path(__file__).resolve().parents[1]
MIX = ROOT / "data" / "userrl-gyms" / "mix"


def mixed_file(path: Path, source: Path, wanted: dict[str, int]) -> Path:
    """The first rows of each gym in ``wanted`` from a UserRL mixed file, rows unchanged."""
    table = pq.read_table(source)
    rows, left = [], dict(wanted)
    for row in table.to_pylist():
        env = row["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]["env_name"]
        if left.get(env, 0) > 0:
            rows.append(row)
            left[env] -= 1
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return path


def config_for(tmp_path: Path, model_dir: Path, train: Path, val: Path, **sections) -> object:
    data = {
        "model": {"path": str(model_dir)},
        "data": {"train_files": [str(train)], "val_files": [str(val)], "train_batch_size": 2,
                 "max_prompt_length": 1024},
        "simulator": {"name": "hf", "model": str(model_dir), "max_tokens": 6},
        "env": {"SearchGym": {"search": {"backend": "none"}}, "PersuadeGym": {"stance_retries": 0}},
        "rollout": {"n": 2, "max_turns": 2, "max_new_tokens": 8, "max_episode_tokens": 1536,
                    "action_format": "plain_text",
                    "system_prompts": {"FunctionGym": "Reply [action] a b c d, [search] test or [answer] x."}},
        "actor": {"lr": 1e-4, "ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2},
        "trainer": {"total_training_steps": 1, "test_freq": 1, "save_freq": 1, "val_before_train": True,
                    "device": "cpu", "run_dir": str(tmp_path / "run"), "max_ckpt_to_keep": 1},
        "logging": {"progress": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(data)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("mix")
    train = mixed_file(tmp / "train.parquet", MIX / "alltrain.parquet",
                       {"FunctionGym": 2, "PersuadeGym": 2, "TravelGym": 3, "TauGym": 1})
    val = mixed_file(tmp / "val.parquet", MIX / "alltest.parquet",
                     {"FunctionGym": 2, "PersuadeGym": 1, "SearchGym": 1, "TravelGym": 2})
    config = config_for(tmp, tiny_model_dir, train, val)
    summary = run_training(config)
    return Path(summary["run_dir"]), summary


def test_unknown_gyms_are_skipped_and_counted_in_summary_and_report(mixed_run, caplog):
    run_dir, summary = mixed_run
    assert summary["status"] == "finished"
    assert summary["tasks"]["train"]["loaded"] == {"FunctionGym": 2, "PersuadeGym": 2}
    assert summary["tasks"]["train"]["skipped"] == {"TravelGym": 3, "TauGym": 1}
    assert summary["tasks"]["val"]["skipped"] == {"TravelGym": 2}
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| train | TravelGym | 0 | 3 |" in report and "| val | SearchGym | 1 | 0 |" in report


def test_validation_is_per_data_source_and_the_report_draws_each(mixed_run):
    run_dir, _ = mixed_run
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validated = [line for line in lines if "val-aux/interact_function/failed_episodes" in line]
    assert [line["step"] for line in validated] == [0, 1]
    for line in validated:
        assert "val-core/interact_function/reward/mean@1" in line  # FunctionGym needs no simulator: never fails
        assert line["val-aux/interact_persuade/failed_episodes"] == 1.0  # the tiny model's persona is noise
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Validation per data source" in report and "| interact_function |" in report
    # the gym whose validation episodes all failed is listed too, with no reward made up for it
    assert "| interact_persuade | all failed (step 0) | all failed (step 1) | all failed | 1 of 1 |" in report
    assert "val-core/interact_persuade/reward/mean@1" not in validated[-1]
    assert (run_dir / "plots" / "validation_by_source.png").stat().st_size > 10_000
    assert "plots/validation_by_source.png" in report


def test_eval_prints_and_writes_a_per_gym_score_table(mixed_run):
    run_dir, _ = mixed_run
    result = evaluate(run_dir, n=2, temperature=1.0)
    rows = result["per_source"]
    assert set(rows) == {"interact_function", "interact_persuade", "interact_searchgym"}
    function = rows["interact_function"]
    assert (function["env_name"], function["tasks"], function["episodes"], function["failed_episodes"]) == \
        ("FunctionGym", 2, 4, 0)
    episodes = [json.loads(line) for line in Path(result["transcripts"]).read_text().splitlines()]
    sums: dict[int, list[float]] = {}
    for e in episodes:
        if e["data_source"] == "interact_function":
            sums.setdefault(e["group"], []).append(sum(t["reward"] for t in e["turns"]))
    assert function["score"] == pytest.approx(sum(sum(v) / len(v) for v in sums.values()) / len(sums))
    assert rows["interact_persuade"]["failed_episodes"] == 2 and rows["interact_persuade"]["score"] is None
    assert result["skipped_rows"] == {"TravelGym": 2}
    table = (Path(result["out_dir"]) / "scores.md").read_text(encoding="utf-8")
    assert "| interact_persuade | PersuadeGym | 1 | 2 | 2 | n/a |" in table


def test_a_functiongym_run_needs_no_simulator_configured(tmp_path, tiny_model_dir):
    train = mixed_file(tmp_path / "train.parquet", MIX / "alltrain.parquet", {"FunctionGym": 2, "TravelGym": 1})
    val = mixed_file(tmp_path / "val.parquet", MIX / "alltest.parquet", {"FunctionGym": 1})
    config = config_for(tmp_path, tiny_model_dir, train, val, env={},
                        trainer={"val_before_train": False, "save_freq": -1, "report": False})
    data = config.model_dump(mode="python")
    del data["simulator"]  # nothing configured: the default would be the 'local' simulator
    data["env"] = {}
    summary = run_training(validate_config(data))
    assert summary["status"] == "finished" and summary["simulator"].get("calls", 0) == 0  # none was built

    named_none = config_for(tmp_path, tiny_model_dir, train, val, simulator={"name": "none"},
                            data={"train_files": [str(MIX / "alltrain.parquet")], "train_max_tasks": 8})
    with pytest.raises(ConfigError, match=r"simulator.name: 'none', but environment\(s\) .*PersuadeGym.* need a simulator"):
        run_training(named_none)


def test_mix_quickstart_validates_every_installed_gym_on_unchanged_rows():
    """The CPU quickstart's validation file is the first row of each data source of UserRL's
    mixed test set, unchanged, and holds one task of every environment installed here."""
    from userrl_core.config.compose import load_recipe
    from userrl_core.data import load_tasks
    from userrl_core.plugins import get_plugin_manager
    from userrl_core.registry import Kind

    full = pq.read_table(MIX / "alltest.parquet").to_pylist()
    first: dict[str, dict] = {}
    for row in full:
        first.setdefault(row["data_source"], row)
    assert pq.read_table(MIX / "quicktest.parquet").to_pylist() == list(first.values())

    config = load_recipe(str(ROOT / "recipes" / "mix_quickstart.yaml"), [])
    assert [Path(f).resolve() for f in config.data.val_files] == [(MIX / "quicktest.parquet").resolve()]
    registry = get_plugin_manager().registry
    tasks = load_tasks(config.data.val_files, registry, max_tasks=config.data.val_max_tasks, env_settings=config.env)
    shipped = {"FunctionGym", "IntentionGym", "PersuadeGym", "SearchGym", "TelepathyGym", "TurtleGym"}
    assert shipped <= set(registry.names(Kind.ENVIRONMENT))
    assert sorted(t.env_name for t in tasks.tasks) == sorted(shipped)
    assert sorted((s.env_name, s.count) for s in tasks.skipped) == [("TauGym", 1), ("TravelGym", 1)]
    assert config.trainer.val_before_train and config.trainer.test_freq <= config.trainer.total_training_steps
