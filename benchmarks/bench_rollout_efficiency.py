"""Item 1: rollout orchestration efficiency against a fixed-latency simulator and policy.

E episodes of IntentionGym run T turns each through the real :class:`RolloutEngine`, the real
IntentionGym environment and the real ``litellm`` simulator plugin, which talks HTTP to
``benchmarks.latency_server`` (a separate process on 127.0.0.1 that answers every chat
completion after ``--sim-latency`` seconds; the judge never marks a detail covered, so every
episode runs all T turns). The policy is a stand-in (:class:`FixedLatencyPolicyStandIn`):
each generate call sleeps ``--policy-latency`` seconds and returns a fixed question for every
prompt, tokenised once with the real SmolLM2 tokenizer.

What is counted. Per turn the engine makes one generate call for all live episodes, then
every episode's environment step issues two simulator calls (user reply and judge) at the
same time. With unlimited concurrency a turn can take no less than
``policy_latency + sim_latency``, so::

    ideal wall time = T * (policy_latency + sim_latency)
    efficiency      = ideal wall time / measured wall time of engine.run(...)

The measured time includes everything the framework does: building the environments, chat
template token bookkeeping, action parsing, the simulator plugin's HTTP, retries bookkeeping,
JSON parsing of the judge's verdict and the metrics. The naive loop for scale runs episodes one
after another (same engine, one episode per run) on a few episodes and scales linearly to E.

Usage::

    python -m benchmarks.bench_rollout_efficiency             # E in 64, 256, 1024; T = 8; 3 repeats
    python -m benchmarks.bench_rollout_efficiency --quick     # smoke run: E = 8, T = 2
    python -m benchmarks.bench_rollout_efficiency --transport litellm   # LiteLLM for every call
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from typing import Any, Iterator

from benchmarks.common import median, print_table, write_results

FIXED_QUESTION = "Could you tell me which dates and what budget you have in mind?"


class FixedLatencyPolicyStandIn:
    """A rollout-backend stand-in: sleeps a fixed latency per generate call (however many
    prompts) and returns the same question, ended by the end-of-turn token, for every prompt."""

    def __init__(self, tokenizer: Any, latency: float) -> None:
        self.tokenizer = tokenizer
        self.latency = latency
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.reply_ids = tokenizer.encode(FIXED_QUESTION, add_special_tokens=False) + [end_of_turn]
        self.calls = 0

    async def generate(self, request: Any) -> Any:
        from userrl_core.types import GenerationResult

        self.calls += 1
        await asyncio.sleep(self.latency)
        ids = [list(self.reply_ids[: request.max_new_tokens]) for _ in request.prompts]
        return GenerationResult(token_ids=ids, logprobs=None)

    def sync_weights(self, source: Any) -> None:
        return None


@contextlib.contextmanager
def latency_server(latency: float) -> Iterator[str]:
    """Start ``benchmarks.latency_server`` in its own process; yields its ``/v1`` base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency_server", "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the latency server did not start (said {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def build(episodes: int, turns: int, base_url: str, transport: str, policy_latency: float):
    """The engine, the simulator and the tasks for one run of ``episodes`` episodes."""
    from transformers import AutoTokenizer

    from userrl_core.config.schema import RunConfig
    from userrl_core.data import load_tasks
    from userrl_core.models import resolve_model_path
    from userrl_core.plugins import get_plugin_manager
    from userrl_core.rollout import RolloutEngine
    from userrl_plugins.intentiongym.tasks import DATA_DIR
    from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

    registry = get_plugin_manager().registry
    tasks = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", registry).tasks
    # the fewest samples per task that divide the episodes evenly among the tasks available
    n = next(k for k in range(1, episodes + 1) if episodes % k == 0 and episodes // k <= len(tasks))
    n_tasks = episodes // n
    config = RunConfig(
        model={"path": "unused"},
        data={"train_files": ["unused"]},
        rollout={"action_format": "plain_text", "n": n, "max_turns": turns, "max_new_tokens": 32,
                 "max_episode_tokens": 8192},
        simulator={"name": "litellm", "model": "openai/bench-simulator", "api_base": base_url,
                   "max_concurrency": 2 * episodes, "timeout": 120.0, "num_retries": 0,
                   "extra": {"transport": transport}},
        env={"IntentionGym": {"max_turns": max(turns, 15)}},
    )
    simulator = build_litellm_simulator(config=config.simulator)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path("builtin:smollm2-135m-instruct")))
    policy = FixedLatencyPolicyStandIn(tokenizer, policy_latency)
    engine = RolloutEngine(policy, registry, simulator, config)
    return engine, simulator, tasks[:n_tasks], n


def run_once(engine: Any, tasks: list, n: int, episodes: int, seed: int) -> dict[str, float]:
    """One engine.run; returns its wall time, CPU time and the engine's own phase timings."""
    async def go():
        started, cpu = time.perf_counter(), time.process_time()
        result = await engine.run(tasks, n, seed=seed)
        return time.perf_counter() - started, time.process_time() - cpu, result

    wall, cpu, result = asyncio.run(go())
    ran = len(result.episodes)
    failed = sum(1 for e in result.episodes if e.status.value != "ok")
    turns = sum(len(e.turns) for e in result.episodes)
    if failed:
        raise RuntimeError(f"{failed} of {ran} episodes failed: {result.episodes[0].error}")
    return {"wall_s": wall, "cpu_s": cpu, "episodes": ran, "turns": turns,
            "generate_s": result.metrics.get("timing_s/generate", 0.0),
            "env_s": result.metrics.get("timing_s/env", 0.0)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Rollout orchestration efficiency (item 1).")
    parser.add_argument("--quick", action="store_true", help="smoke run: E = 8, T = 2, short latencies, 1 repeat")
    parser.add_argument("--episodes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--sim-latency", type=float, default=1.0, help="seconds the server waits per call")
    parser.add_argument("--policy-latency", type=float, default=0.5, help="seconds per generate call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transport", choices=["direct", "litellm", "auto"], default="auto",
                        help="simulator.extra.transport of the litellm plugin")
    parser.add_argument("--sequential-episodes", type=int, default=2,
                        help="episodes timed one by one for the naive sequential estimate (0: skip)")
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.turns, args.repeats = [8], 2, 1
        args.sim_latency, args.policy_latency, args.sequential_episodes = 0.2, 0.1, 1

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ideal = args.turns * (args.policy_latency + args.sim_latency)
    rows, records = [], []
    with latency_server(args.sim_latency) as base_url:
        for episodes in args.episodes:
            engine, simulator, tasks, n = build(episodes, args.turns, base_url, args.transport, args.policy_latency)
            run_once(engine, tasks[:2], 1, 2, seed=99)  # warm-up: first-call imports and connections
            runs = [run_once(engine, tasks, n, episodes, seed=k) for k in range(args.repeats)]
            walls = [r["wall_s"] for r in runs]
            record = {
                "episodes": runs[0]["episodes"], "turns": args.turns, "ideal_s": ideal,
                "transport": getattr(simulator, "transport", args.transport),
                "wall_s": walls, "median_wall_s": median(walls),
                "efficiency": ideal / median(walls),
                "cpu_s": [r["cpu_s"] for r in runs],
                "cpu_ms_per_episode_turn": 1000 * median([r["cpu_s"] / r["turns"] for r in runs]),
                "simulator_calls": simulator.stats()["calls"],
                "runs": runs,
            }
            records.append(record)
            rows.append([record["episodes"], args.turns, record["transport"], ideal, record["median_wall_s"],
                         record["efficiency"], record["cpu_ms_per_episode_turn"]])
        sequential = None
        if args.sequential_episodes:
            engine, _, tasks, _ = build(1, args.turns, base_url, args.transport, args.policy_latency)
            run_once(engine, tasks[:1], 1, 1, seed=99)  # warm-up
            per_episode = [run_once(engine, tasks[:1], 1, 1, seed=k)["wall_s"] for k in range(args.sequential_episodes)]
            sequential = {"episodes_timed": args.sequential_episodes, "per_episode_s": per_episode,
                          "median_per_episode_s": median(per_episode)}
            for episodes in args.episodes:
                estimate = median(per_episode) * episodes
                rows.append([episodes, args.turns, "naive sequential (est.)", ideal, estimate, ideal / estimate, "-"])

    print_table(
        f"Rollout efficiency: simulator latency {args.sim_latency} s, policy latency {args.policy_latency} s "
        f"(median of {args.repeats})",
        ["episodes", "turns", "transport", "ideal s", "wall s", "efficiency", "CPU ms / episode-turn"], rows,
    )
    payload = {"settings": vars(args), "ideal_s": ideal, "results": records, "sequential": sequential}
    stem = "bench_rollout_efficiency" + ("" if args.transport == "auto" else f"_{args.transport}")
    path = write_results("bench_rollout_efficiency", payload, file_stem=stem)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
