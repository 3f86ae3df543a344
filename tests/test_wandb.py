"""wandb for real (finding 13 of the reliability review; issue 10 finding 9): a tiny training
with ``logging.wandb.enabled=true`` and ``mode: online`` but no ``WANDB_API_KEY`` falls back to
offline with one warning line, and the offline run, read back with wandb's own reader
(``wandb leet inspect --json``, the wandb-core record reader), holds the same metrics as
metrics.jsonl, the config without secrets, and the report's plots as images. ``userrl doctor``
says the key is missing first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.openai_server import OpenAIServer, reply
from support.tiny_runs import JUDGE_VERDICT_NONE, ROOT, is_judge_request, run_userrl, tiny_recipe

pytest.importorskip("wandb")  # the test extra installs it (pyproject.toml)

CANARY = "canary-wandb-5be1d7a09c"


def wandb_records(run_file: Path) -> list[dict]:
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    out = subprocess.run([wandb_cli, "leet", "inspect", str(run_file), "--json"], capture_output=True, text=True,
                         timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_wandb_offline_fallback_holds_metrics_config_and_plots(tmp_path, tiny_model_dir):
    home = tmp_path / "home"  # no ~/.netrc: no stored wandb login
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": "", "WANDB_TEST_API_KEY": CANARY, "WANDB_DISABLE_CODE": "true"}
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    with OpenAIServer(default=lambda body: reply(JUDGE_VERDICT_NONE if is_judge_request(body) else "Fine.")) as server:
        recipe = tiny_recipe(tmp_path, tiny_model_dir, api_base=server.base_url,
                             simulator={"api_key_env": "WANDB_TEST_API_KEY"},
                             trainer={"total_training_steps": 2, "test_freq": 2},
                             logging={"wandb": {"enabled": True, "mode": "online"}})
        doctor = subprocess.run([sys.executable, "-m", "userrl_core.cli", "doctor", str(recipe)], cwd=ROOT,
                                capture_output=True, text=True, timeout=600, env={**env_clean, **env})
        assert "logging.wandb: WANDB_API_KEY is not set" in doctor.stdout
        os.environ.pop("WANDB_API_KEY", None)
        result = run_userrl("run", str(recipe), "--run-dir", str(tmp_path / "run"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # one line of ours (wandb itself may add its own notices, e.g. about weave, on import)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("userrl:") and "wandb" in line.lower()]
    assert len(warnings) == 1 and "WANDB_API_KEY is not set" in warnings[0] and "offline" in warnings[0], warnings
    assert "Traceback" not in result.stderr

    run_files = list((tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(run_files) == 1
    records = wandb_records(run_files[0])
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if r["type"] == "history"
               and "step" in r["history"]}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for line in metrics:
        logged = history[line["step"]]
        for key, value in line.items():
            if key in ("step", "epoch", "timestamp") or value is None:
                continue
            assert logged[key] == pytest.approx(value), key
    config = next(r["run"]["config"]["update"] for r in records if r["type"] == "run")
    assert config["simulator"]["api_key_env"] == "WANDB_TEST_API_KEY"
    assert CANARY not in json.dumps(records)
    media = {p.name for p in (run_files[0].parent / "files" / "media" / "images").rglob("*.png")}
    plots = {p.stem for p in (tmp_path / "run" / "plots").glob("*.png")}
    assert plots and all(any(name.startswith(stem) for name in media) for stem in plots), (plots, media)
