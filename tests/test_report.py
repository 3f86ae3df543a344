"""The automatic report, on run folders written here as real files: finished, stopped, crashed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from userrl_core.config import validate_config
from userrl_core.errors import UserError
from userrl_core.training.report import (
    PLOTS,
    key_nodes,
    load_run,
    pick_transcripts,
    validation_by_source,
    validation_failures,
    write_report,
)

VAL_KEY = "val-core/interact_intention/reward/mean@1"


def episode(step: int, task: str, score: float, sample: int = 0) -> dict:
    return {
        "step": step, "task_id": task, "data_source": "interact_intention", "group": 0, "sample": sample,
        "status": "ok", "end_reason": "finish", "score": score,
        "turns": [
            {"text": "Which city are you flying from?", "action": {"choice": "action", "content": "Which city?"},
             "reward": 0.6, "observation": "From Lisbon.", "invalid": False, "no_action": False,
             "info": {"newly_covered": ["departure city"],
                      "notes": ["Details covered this turn: departure city"]}},
            {"text": "<tool_call>finish</tool_call>", "action": {"choice": "finish", "content": ""},
             "reward": score - 0.6, "observation": "", "invalid": False, "no_action": False, "info": {}},
        ],
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Book me a flight."}],
    }


def make_run_folder(root: Path, *, steps: int = 30, status: str | None = "finished", torn_tail: bool = False) -> Path:
    run_dir = root / "run"
    (run_dir / "transcripts").mkdir(parents=True)
    config = validate_config({"model": {"path": "builtin:smollm2-135m-instruct"},
                              "data": {"train_files": ["t.parquet"]},
                              "trainer": {"test_freq": 5}})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    lines = []
    for step in range(0, steps + 1):
        line = {"step": step, "epoch": 0, "timestamp": 1000.0 + step}
        if step:
            line.update({
                "critic/rewards/mean": 0.5 + 0.05 * step if step <= 15 else 1.2 - 0.06 * (step - 15),
                "actor/entropy": 0.8 - 0.01 * step, "actor/pg_loss": 0.1 * math.sin(step),
                "actor/grad_norm": 1.0 / step, "response_length/mean": 300.0 - 5 * step,
                "perf/throughput": 500.0 + step, "perf/time_per_step": 2.0,
                "simulator/errors": float(step % 7 == 0), "simulator/cost_usd": 0.01,
            })
        if step % 5 == 0:
            line[VAL_KEY] = [0.4, 0.6, 0.9, 1.3, 0.9, 0.3, 0.2][step // 5]
        lines.append(json.dumps(line))
    text = "\n".join(lines) + "\n"
    if torn_tail:
        text += '{"step": 31, "epoch": 0, "critic/rew'  # the process died mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    decisions = [{"step": 25, "rule": "val_reward_drop", "action": "rollback",
                  "message": "val_reward_drop: validation reward = 0.3 below 0.75 × best",
                  "data": {"value": 0.3}, "changes": {"actor.lr": "*0.5"}}]
    (run_dir / "decisions.jsonl").write_text("\n".join(json.dumps(d) for d in decisions) + "\n")
    for step in (5, 15, 30):
        (run_dir / "transcripts" / f"step_{step:06d}.jsonl").write_text(json.dumps(episode(step, "t1", 0.5)) + "\n")
        val = [episode(step, "v1", 1.3 if step == 15 else 0.2), episode(step, "v2", 0.1, sample=1)]
        (run_dir / "transcripts" / f"val_step_{step:06d}.jsonl").write_text("\n".join(json.dumps(e) for e in val) + "\n")
    if status is not None:
        (run_dir / "summary.json").write_text(json.dumps({
            "status": status, "steps": steps, "best_step": 15, "best_val_reward": 1.3, "final_val_reward": 0.2,
            "wall_time_s": 120.0, "decisions": decisions, "rollbacks": 1,
            "simulator": {"name": "local", "calls": 90, "failures": 4, "cost_usd": 0.3}, "run_dir": str(run_dir),
        }))
    return run_dir


def assert_real_plots(run_dir: Path) -> None:
    for name, _, _ in PLOTS:
        path = run_dir / "plots" / name
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 600 and image.height >= 250
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 5, f"{name} is blank"


def test_finished_run_report_shows_best_step_decisions_and_curves(tmp_path):
    run_dir = make_run_folder(tmp_path)
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    assert "**Status: finished**" in text
    assert "Best validation reward **1.3 at step 15**" in text
    assert "| 25 | val_reward_drop | rollback |" in text
    assert "`actor.lr` = `*0.5`" in text
    assert "builtin:smollm2-135m-instruct" in text
    assert "validation below 0.5 × best (collapse onset)" in text
    assert "| 0 | first validation | 0.4 |" in text
    for name, _, _ in PLOTS:
        assert f"(plots/{name})" in text
    assert_real_plots(run_dir)


def test_report_shows_episodes_at_best_and_end_with_turn_rewards_and_covered_details(tmp_path):
    run_dir = make_run_folder(tmp_path)
    text = write_report(run_dir).read_text()
    assert "### Episodes at the best step (15): val_step_000015.jsonl" in text
    assert "### Episodes at the end (step 30): val_step_000030.jsonl" in text
    assert "Per-turn rewards: 0.6, 0.7" in text  # the 1.3-score validation episode at step 15
    assert "Details covered this turn: departure city" in text
    assert "> Book me a flight." in text


def test_key_nodes_name_first_best_collapse_guard_and_final(tmp_path):
    data = load_run(make_run_folder(tmp_path))
    nodes = key_nodes(data)
    assert nodes == [
        (0, "first validation"),
        (15, "best validation"),
        (25, "validation below 0.5 × best (collapse onset); guard: val_reward_drop (rollback) first fired"),
        (30, "final step"),
    ]


def test_crashed_run_without_summary_and_with_a_torn_line(tmp_path):
    run_dir = make_run_folder(tmp_path, status=None, torn_tail=True)
    text = write_report(run_dir).read_text()
    assert "**Status: unknown**" in text and "no summary.json" in text
    assert "metrics.jsonl: 1 unreadable line(s) left out (line 32)" in text
    assert "at step 15" in text
    assert_real_plots(run_dir)


def test_failed_run_with_no_metrics_yet_still_reports(tmp_path):
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: CUDA OOM",
                                                      "steps": 0}))
    text = write_report(run_dir).read_text()
    assert "**Status: failed**: RuntimeError: CUDA OOM" in text
    assert "config.yaml is missing" in text and "metrics.jsonl is missing" in text
    assert "No transcripts were saved" in text
    for name, _, _ in PLOTS:  # every plot exists and says what was not recorded
        assert (run_dir / "plots" / name).stat().st_size > 1000


def test_transcript_pick_falls_back_to_the_nearest_earlier_file(tmp_path):
    run_dir = make_run_folder(tmp_path)
    picks = pick_transcripts(run_dir, best_step=12)
    assert picks[0][1].name == "val_step_000005.jsonl"
    assert picks[-1][1].name == "val_step_000030.jsonl"


def test_not_a_run_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="not found"):
        write_report(tmp_path / "missing")


def test_parameters_are_counted_from_a_real_checkpoint_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    run_dir = make_run_folder(tmp_path)
    hf = run_dir / "checkpoints" / "best" / "hf"
    hf.mkdir(parents=True)
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(hf / "model.safetensors"))
    assert "17 (all weights in the checkpoint" in write_report(run_dir).read_text()


def test_cli_report_command_in_a_subprocess(tmp_path):
    run_dir = make_run_folder(tmp_path, status="stopped")
    done = subprocess.run([sys.executable, "-m", "userrl_core.cli", "report", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(run_dir / "report.md") in done.stdout
    assert "**Status: stopped**" in (run_dir / "report.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "userrl_core.cli", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "run folder not found" in bad.stderr


def test_a_gym_whose_validation_episodes_all_failed_is_shown_without_a_made_up_reward(tmp_path):
    """A mixed run where one gym's validation episodes always fail (its simulator never gives a
    usable reply): that gym has no reward at any step, yet the report lists it, marks its steps
    "all failed" and draws its failed share; the other gym keeps its reward curve."""
    run_dir = make_run_folder(tmp_path, steps=4)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop(VAL_KEY, None)
        if line["step"] in (0, 2, 4):
            line.update({
                "val-core/interact_function/reward/mean@1": 0.25 * line["step"],
                "val-aux/interact_function/episodes": 2.0, "val-aux/interact_function/failed_episodes": 0.0,
                "val-aux/interact_persuasion/episodes": 2.0, "val-aux/interact_persuasion/failed_episodes": 2.0,
                "val-aux/simulator/failures": 4.0,
            })
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    data = load_run(run_dir)
    assert "interact_persuasion" not in validation_by_source(data)  # no reward is invented for it
    failures = validation_failures(data)
    assert set(failures) == {"interact_function", "interact_persuasion"}  # not the simulator's counters
    assert failures["interact_persuasion"] == ([0, 2, 4], [1.0, 1.0, 1.0], [True, True, True])
    assert failures["interact_function"] == ([0, 2, 4], [0.0, 0.0, 0.0], [False, False, False])

    text = write_report(run_dir).read_text()
    assert "| interact_persuasion | all failed (step 0) | all failed (step 4) | all failed | 2 of 2 |" in text
    assert "| interact_function | 0 (step 0) | 1 (step 4) | 1 | 0 of 2 |" in text
    # the failed gym is drawn in its own colour (matplotlib's second cycle colour, C1 #ff7f0e):
    # its "all failed" marks and its failed-share line
    with Image.open(run_dir / "plots" / "validation_by_source.png") as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    orange = (abs(pixels - np.array([0xff, 0x7f, 0x0e])).sum(axis=2) < 40).sum()
    assert orange > 200
