"""The quickstart recipe end to end at tiny sizes, through the real CLI in a subprocess.

Real SmolLM2-135M, real local simulator, real parquet data, real torch updates: checks the
run folder (metrics, transcripts, a loadable HF checkpoint, summary, report) and that
``--resume`` continues at the next step with the same data order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.train_batch_size=2",
    "actor.ppo_mini_batch_size=2",
    "actor.ppo_micro_batch_size_per_gpu=2",
    "rollout.n=2",
    "rollout.max_turns=2",
    "rollout.max_new_tokens=12",
    "data.val_max_tasks=2",
    "trainer.test_freq=2",
    "trainer.save_freq=1",
    "trainer.max_ckpt_to_keep=2",
    "logging.transcripts_per_step=2",
]


def _userrl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "userrl_core.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1500,
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    proc = _userrl("run", "recipes/quickstart.yaml", *TINY, "trainer.total_training_steps=2",
                   "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return run_dir


def test_run_folder_has_metrics_for_every_step(quickstart_run: Path) -> None:
    lines = _lines(quickstart_run / "metrics.jsonl")
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert "val-core/interact_intention/reward/mean@1" in lines[0]
    assert "val-core/interact_intention/reward/mean@1" in lines[2]
    for line in lines[1:]:
        for key in ("critic/score/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/lr",
                    "response_length/mean", "rollout/turns/mean", "rollout/invalid_action_rate",
                    "env/coverage/mean", "perf/throughput", "perf/time_per_step", "simulator/calls"):
            assert key in line, key
        assert line["actor/entropy"] > 0
        assert line["simulator/calls"] > 0


def test_transcripts_and_summary(quickstart_run: Path) -> None:
    transcripts = sorted((quickstart_run / "transcripts").glob("step_*.jsonl"))
    assert len(transcripts) == 2
    episode = _lines(transcripts[0])[0]
    assert episode["turns"] and "reward" in episode["turns"][0]
    summary = json.loads((quickstart_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2
    report = (quickstart_run / "report.md").read_text()
    assert "best" in report.lower()
    plots = list((quickstart_run / "plots").glob("*.png"))
    assert plots and all(p.stat().st_size > 1000 for p in plots)


def test_checkpoint_is_a_loadable_hf_model(quickstart_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = quickstart_run / "checkpoints" / "step_000002" / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert model.config.vocab_size >= len(tokenizer) - 1
    config = (quickstart_run / "config.yaml").read_text()
    assert "builtin:smollm2-135m-instruct" in config


def test_resume_continues_at_the_next_step(quickstart_run: Path) -> None:
    proc = _userrl("run", "recipes/quickstart.yaml", *TINY, "trainer.total_training_steps=3",
                   "--run-dir", str(quickstart_run), "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    steps = [line["step"] for line in _lines(quickstart_run / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3]
    assert (quickstart_run / "checkpoints" / "step_000003" / "hf").is_dir()
