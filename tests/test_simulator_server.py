"""The managed simulator server: start, health wait, routing, stop (no process left behind).

SGLang needs a GPU, so these tests launch an OpenAI-compatible stand-in through the same
launcher hook (``tests/support/sglang_stand_in.py``, shared with tests/test_signals.py): a small
HTTP server on 127.0.0.1 that takes sglang.launch_server's arguments, answers /health,
/v1/models and /v1/chat/completions, and forks a child process so that the process-group stop is
exercised.
"""

import os
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from userrl_core.config.schema import SimulatorConfig, SimulatorServerConfig
from userrl_core.training.simulator_server import (
    ManagedSimulatorServer,
    SimulatorServerError,
    build_server_command,
    routed_simulator_config,
)

STAND_IN = Path(__file__).parent / "support" / "sglang_stand_in.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    monkeypatch.delenv("STAND_IN_JUDGE", raising=False)
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv("STAND_IN_PIDS", str(pids))
    return (sys.executable, str(STAND_IN)), pids


def recorded_pids(pids_file) -> list[int]:
    if not pids_file.exists():
        return []
    return [int(p) for line in pids_file.read_text().split("\n") if line for p in line.split()]


def assert_all_gone(pids: list[int]) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes left running: {alive}")


def settings(**kw) -> SimulatorServerConfig:
    base = dict(enabled=True, model="/models/Qwen3-30B-A3B-Instruct-2507",
                served_model_name="Qwen/Qwen3-30B-A3B-Instruct-2507", gpu=0, port=free_port(),
                startup_timeout=30)
    base.update(kw)
    return SimulatorServerConfig(**base)


def test_command_carries_the_recipe_settings():
    cmd = build_server_command(settings(port=30001, context_length=16384, mem_fraction=0.8,
                                        max_running_requests=96, extra_args=["--tp", "1"]))
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    joined = " ".join(cmd)
    for piece in ["--model-path /models/Qwen3-30B-A3B-Instruct-2507", "--port 30001", "--context-length 16384",
                  "--mem-fraction-static 0.8", "--max-running-requests 96",
                  "--served-model-name Qwen/Qwen3-30B-A3B-Instruct-2507", "--tp 1"]:
        assert piece in joined


def test_routing_points_the_simulator_at_the_server_without_a_key():
    sim = SimulatorConfig(name="litellm", model="dashscope/qwen-plus", api_key_env="DASHSCOPE_API_KEY",
                          temperature=0.3)
    routed = routed_simulator_config(sim, settings(host="0.0.0.0", port=31234))
    assert routed.model == "openai/Qwen/Qwen3-30B-A3B-Instruct-2507"
    assert routed.api_base == "http://127.0.0.1:31234/v1"
    assert routed.api_key_env is None and routed.temperature == 0.3


def test_server_starts_answers_through_litellm_and_leaves_nothing_running(stand_in, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookups
    launcher, pids_file = stand_in
    conf = settings(gpu=3, extra_args=["--startup-delay", "1.0"])
    with ManagedSimulatorServer(conf, launcher=launcher, poll_interval=0.1) as server:
        assert server.running and server.startup_seconds >= 1.0
        routed = routed_simulator_config(SimulatorConfig(name="litellm"), conf)
        import litellm

        reply = litellm.completion(model=routed.model, api_base=routed.api_base, api_key="none",
                                   messages=[{"role": "user", "content": "which city?"}])
        assert reply.choices[0].message.content == "stand-in reply to: which city? gpu=3"
        pids = recorded_pids(pids_file)
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    assert not server.running
    assert_all_gone(pids)


def test_a_server_that_crashes_during_startup_is_reported_with_its_log(stand_in):
    launcher, _ = stand_in
    server = ManagedSimulatorServer(settings(extra_args=["--crash"]), launcher=launcher, poll_interval=0.1)
    with pytest.raises(SimulatorServerError, match=r"(?s)exited with status 3.*CUDA out of memory"):
        server.start()
    assert server.process is None


def test_a_server_that_never_gets_healthy_times_out_and_is_killed(stand_in):
    launcher, pids_file = stand_in
    server = ManagedSimulatorServer(settings(startup_timeout=1.5, extra_args=["--startup-delay", "60"]),
                                    launcher=launcher, poll_interval=0.1, stop_timeout=5)
    start = time.time()
    with pytest.raises(SimulatorServerError, match=r"not healthy after 1.5 s \(simulator_server.startup_timeout\)"):
        server.start()
    assert time.time() - start < 15
    assert_all_gone(recorded_pids(pids_file))
