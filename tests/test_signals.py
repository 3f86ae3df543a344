"""SIGTERM (what Slurm, Kubernetes and ``docker stop`` send) is handled like Ctrl-C: the run
writes its summary and report, stops its managed simulator server's whole process group and
exits with status 143 (finding 6 of the reliability review; exit codes of finding 5).

SGLang needs a GPU, so the managed server is a stand-in reached through the real launch path:
a ``sglang/launch_server.py`` module on ``PYTHONPATH`` (the run starts ``python -m
sglang.launch_server ...`` exactly as on a GPU machine) that answers /health, /v1/models and
chat completions like SGLang's OpenAI-compatible server, and forks a worker process as SGLang's
scheduler does; ``nvidia-smi -L`` is a stand-in listing one GPU, for the requirements check.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from support.tiny_runs import JUDGE_VERDICT_NONE, ROOT, tiny_recipe, userrl_command

STAND_IN = Path(__file__).parent / "support" / "sglang_stand_in.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stand_ins(root: Path) -> dict[str, str]:
    """PYTHONPATH with the sglang stand-in and PATH with an nvidia-smi that lists one GPU."""
    package = root / "stand_in" / "sglang"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "launch_server.py").write_text(STAND_IN.read_text())
    bin_dir = root / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    return {
        "PYTHONPATH": os.pathsep.join([str(root / "stand_in"), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]]),
        "STAND_IN_PIDS": str(root / "pids.txt"),
        "STAND_IN_SERVED": str(root / "served.txt"),
        "STAND_IN_JUDGE": JUDGE_VERDICT_NONE,
        "PYTHONUNBUFFERED": "1",
    }


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_writes_summary_and_report_stops_the_server_and_exits_143(tmp_path, tiny_model_dir):
    env = stand_ins(tmp_path)
    served_model = tmp_path / "simulator-model"
    served_model.mkdir()
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(
        tmp_path, tiny_model_dir,
        simulator_server={"enabled": True, "model": str(served_model), "served_model_name": "stand-in",
                          "port": free_port(), "gpu": 0, "startup_timeout": 120},
        trainer={"total_training_steps": 200, "val_before_train": False, "test_freq": -1},
    )
    proc = subprocess.Popen(userrl_command("run", str(recipe), "--run-dir", str(run_dir)), cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        served = tmp_path / "served.txt"
        wait_for(lambda: served.exists() and served.stat().st_size >= 4 or proc.poll() is not None, 240,
                 "the run to call its simulator")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        server_pids = [int(p) for line in (tmp_path / "pids.txt").read_text().split() for p in [line]]
        assert len(server_pids) == 2 and all(alive(p) for p in server_pids)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "terminated" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "terminated"
    assert "SIGTERM" in summary["error"]
    # the signal came during step 1: no step finished (finding 9: the summary said 1)
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if line.strip()] if (run_dir / "metrics.jsonl").exists() else []
    assert summary["steps"] == max(logged, default=0)
    assert (run_dir / "report.md").is_file()
    assert "terminated" in (run_dir / "report.md").read_text()
    wait_for(lambda: not any(alive(p) for p in family + server_pids), 15, "every process of the run to end")
