"""``userrl eval`` end to end on a tiny checkpoint: real model files, real parquet tasks, the real
local simulator, and the CLI in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from userrl_core.config import validate_config
from userrl_core.errors import UserError
from userrl_core.training.evaluate import evaluate, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
VAL_KEY = "val-core/interact_intention/reward/mean@2"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, tiny_model_dir) -> Path:
    """A run folder as the trainer leaves it: config.yaml and a best checkpoint in HF format."""
    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    config = validate_config({
        "model": {"path": "builtin:smollm2-135m-instruct"},
        "data": {"train_files": [str(ROOT / "data/intentiongym/userrl_splits/train.parquet")],
                 "val_files": [str(ROOT / "data/intentiongym/userrl_splits/test.parquet")],
                 "val_max_tasks": 2, "train_batch_size": 2},
        "rollout": {"action_format": "plain_text", "max_turns": 2, "max_new_tokens": 8,
                    "max_episode_tokens": 1024},
        "actor": {"ppo_mini_batch_size": 2},
        "trainer": {"device": "cpu"},
    })
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    shutil.copytree(tiny_model_dir, run_dir / "checkpoints" / "best" / "hf")
    (run_dir / "checkpoints" / "best" / "meta.json").write_text(json.dumps({"step": 4, "val_score": 0.1}))
    return run_dir


def test_eval_of_a_run_uses_its_best_checkpoint_and_validation_metric_names(run_folder):
    result = evaluate(run_folder, n=2, temperature=1.0)
    out = Path(result["out_dir"])
    assert out == run_folder / "eval" / "best_val_n2"
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(result, default=str))
    assert result["checkpoint"] == str(run_folder / "checkpoints" / "best" / "hf")
    assert (result["tasks"], result["episodes"]) == (2, 4)

    episodes = [json.loads(line) for line in Path(result["transcripts"]).read_text().splitlines()]
    assert len(episodes) == 4 and {e["sample"] for e in episodes} == {0, 1}
    ok = [e for e in episodes if e["status"] == "ok"]
    assert result["failed_episodes"] == 4 - len(ok)
    assert result["metrics"][VAL_KEY] == pytest.approx(sum(e["score"] for e in ok) / len(ok))
    assert result["reward"] == pytest.approx(result["metrics"][VAL_KEY])
    assert "val-aux/interact_intention/coverage/mean@2" in result["metrics"]
    assert result["turns"] == pytest.approx(sum(len(e["turns"]) for e in ok) / len(ok))
    assert sum(row["episodes"] for row in result["per_category"].values()) == 4
    assert result["simulator"]["name"] == "local" and result["simulator"]["calls"] > 0
    assert "cost_usd" in result["simulator"] and "errors" in result["simulator"]


def test_checkpoint_resolution_and_clear_errors(run_folder, tmp_path):
    best = run_folder / "checkpoints" / "best"
    assert resolve_checkpoint(run_folder) == (best / "hf", run_folder)
    assert resolve_checkpoint(best) == (best / "hf", run_folder)
    assert resolve_checkpoint(best / "hf") == (best / "hf", None)
    with pytest.raises(UserError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(UserError, match="neither a run folder"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(UserError, match="pass --recipe"):
        evaluate(best / "hf", n=1)
    with pytest.raises(UserError, match="--split 'tests'"):
        evaluate(run_folder, split="tests", n=1)


def test_cli_eval_in_a_subprocess(run_folder, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "userrl_core.cli", "eval", str(run_folder), "--n", "1", "--max-tasks", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val-core/interact_intention/reward/mean@1" in done.stdout
    # progress while it runs: piped, plain lines (README, "Command line")
    assert "eval val · validate done · episodes 1/1" in done.stderr, done.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["tasks"] == 1 and result["n"] == 1
    bad = subprocess.run([sys.executable, "-m", "userrl_core.cli", "eval", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "not found" in bad.stderr
