"""The fsdp backend's ranks as Ray actors (2 CPU ranks, gloo), and nothing left running after
the run ends or is interrupted with Ctrl-C."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
import torch

from test_fsdp_backend import make_batch, make_config, max_diff, single_process
from tests.support.sglang_double import engine_state
from userrl_core.types import GenerationRequest
from userrl_plugins.backends.fsdp_plugin import make_training_backend
from userrl_plugins.backends.sglang_plugin import make_rollout_backend


def alive(pids):
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids, seconds=20):
    deadline = time.time() + seconds
    while alive(pids) and time.time() < deadline:
        time.sleep(0.2)
    return alive(pids)


def ray_processes():
    names = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor", "runtime_env")
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(n in cmd for n in names) and "pytest" not in cmd:
            found.append(proc.info["pid"])
    return found


def test_ray_actor_group_trains_like_one_process_and_cleans_up(tiny_model_dir, monkeypatch):
    config = make_config(tiny_model_dir).model_copy(deep=True)
    config.ray.enabled = True
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", root)  # the actors import the SGLang engine double from tests/support
    before = set(ray_processes())
    backend = make_training_backend(config=config)
    try:
        import ray

        assert ray.is_initialized()
        placement = ray.util.placement_group_table()
        assert any(p["bundles"] and len(p["bundles"]) == 2 and p["state"] == "CREATED" for p in placement.values())
        rank_pids = list(backend.group.pids)
        assert len(set(rank_pids)) == 2 and os.getpid() not in rank_pids
        single = single_process(tiny_model_dir, config)
        batch = make_batch(single.model.config.vocab_size, seed=3)
        batch.old_logprobs = single.compute_logprobs(batch)
        assert torch.allclose(backend.compute_logprobs(batch), batch.old_logprobs, atol=1e-6)
        expected, got = single.update(batch), backend.update(batch)
        assert got["actor/pg_loss"] == pytest.approx(expected["actor/pg_loss"], rel=1e-4)
        assert max_diff(backend.full_state_dict(), single.model.state_dict()) < 2e-5
        # A colocated rollout engine in each actor, many requests in flight (a threaded actor).
        rollout = make_rollout_backend(config=config, trainer=backend,
                                       engine_factory="tests.support.sglang_double:SGLangEngineDouble")
        assert [p["pid"] for p in rollout.placement] == rank_pids
        result = asyncio.run(rollout.generate(GenerationRequest(prompts=[[1, 2], [3, 4], [5], [6]], max_new_tokens=3)))
        assert len(result.token_ids) == 4 and all(1 <= len(ids) <= 3 for ids in result.token_ids)
        assert [s["requests"] for s in backend.engines("control", engine_state)] == [2, 2]
        engine_children = [child.pid for pid in rank_pids for child in psutil.Process(pid).children(recursive=True)]
        assert engine_children
        ray_pids = set(ray_processes()) - before
        assert ray_pids, "a local Ray instance should be running during the run"
    finally:
        backend.close()
    assert wait_gone(engine_children) == []  # the engines were shut down before the actors were killed
    import ray

    assert not ray.is_initialized()
    assert wait_gone(rank_pids) == []
    assert wait_gone(list(ray_pids)) == []


# The run as a terminal's foreground job: SIGINT at its default (a test suite started in the
# background, e.g. under nohup, passes SIGINT ignored on to every process it starts).
RUN_AND_WAIT = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {root!r} + "/tests")
    from test_fsdp_backend import make_config
    from userrl_plugins.backends.fsdp_plugin import make_training_backend
    config = make_config({model!r}).model_copy(deep=True)
    config.ray.enabled = {use_ray}
    backend = make_training_backend(config=config)
    print("READY", flush=True)
    try:
        while True:
            time.sleep(0.2)
    finally:
        backend.close()
""")


def _signal_state(pid: int) -> str:
    """The Sig* lines (pending, blocked, ignored, caught masks) and the state of every thread of
    ``pid``, for a process that did not react to a signal."""
    lines = []
    for task in sorted(os.listdir(f"/proc/{pid}/task")):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            fields = [line.strip() for line in status if line.startswith(("Name", "State", "Sig", "ShdPnd"))]
        lines.append(f"{task}: " + "; ".join(fields))
    return "\n".join(lines)


@pytest.mark.parametrize("use_ray", [True, False], ids=["ray-actors", "local-processes"])
def test_ctrl_c_leaves_no_process_behind(tiny_model_dir, use_ray):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = RUN_AND_WAIT.format(root=root, model=str(tiny_model_dir), use_ray=use_ray)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=root)
    try:
        deadline = time.time() + 240
        lines = []
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("READY") or (not line and proc.poll() is not None):
                break
        assert lines and lines[-1].startswith("READY"), "".join(lines[-30:])
        # keep reading what the run and its ranks print while they shut down: a full pipe would
        # block their writes and stop them from exiting
        drained: list[str] = []
        reader = threading.Thread(target=lambda: drained.extend(proc.stdout), daemon=True)
        reader.start()
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 2  # the two ranks (and Ray's own processes)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not exit within 60 s of Ctrl-C; it printed:\n" + "".join(drained[-40:])
                        + "\nits signal state per thread:\n" + _signal_state(proc.pid))
        assert wait_gone(children, 30) == []
    finally:
        if proc.poll() is None:
            proc.kill()
