"""Item 1: rollout orchestration efficiency, both rollout modes, fixed and heavy-tailed latencies.

E episodes of IntentionGym run T turns each through the real :class:`RolloutEngine`, the real
IntentionGym environment and the real ``litellm`` simulator plugin, which talks HTTP to
``benchmarks.latency_server`` (a separate process on 127.0.0.1; the judge never marks a detail
covered, so every episode runs all T turns). The policy is :class:`ContinuousBatchingStandIn`:
like a continuous-batching server (SGLang) every prompt takes its own latency, and a request
returns when its slowest prompt is done; each reply is a fixed question carrying a tag
``[s<seed> e<episode> t<turn>]``, tokenised beforehand with the real SmolLM2 tokenizer.

Latency models (``--latency``):

* ``fixed``: policy 0.5 s per request, simulator 1.0 s per call (the earlier benchmark's);
* ``heavy``: lognormal, policy median 0.5 s with sigma 0.5, simulator median 1 s with sigma 1.

Every latency is drawn by :func:`benchmarks.latency_server.draw_latency` from
(seed, episode, turn, call) with call ``policy``, ``reply`` or ``judge``, so both modes face the
same draws in a repeat (repeat k uses seed k). An episode's step makes its reply and judge calls
at the same time, so one turn of episode e costs at least ``policy(e, t) + max(reply(e, t),
judge(e, t))``, and no engine can finish before the makespan bound::

    bound      = max over episodes e of  sum over turns t of  policy(e, t) + max(reply(e, t), judge(e, t))
    efficiency = bound / measured wall time of engine.run(...)

For reference the barrier's own floor, ``sum over t of max over e`` of the same turn costs, is
reported as ``sync_floor_s``: what the ``sync`` mode would need with zero overhead.

The measured time includes everything the framework does: building the environments, chat
template token bookkeeping, action parsing, the simulator plugin's HTTP, judge parsing and the
metrics. Client CPU per episode-turn is the benchmark process's CPU time during ``engine.run``
divided by E x T (the latency server runs in its own process and is not counted).

Usage::

    python -m benchmarks.bench_rollout_efficiency                  # E in 64, 256, 1024; T = 8; both models; 3 repeats
    python -m benchmarks.bench_rollout_efficiency --quick          # smoke run: E = 8, T = 2, short latencies
    python -m benchmarks.bench_rollout_efficiency --latency heavy --episodes 256 --repeats 1
    python -m benchmarks.bench_rollout_efficiency --episodes 1024 --latency-scale 0.1   # dense events: CPU apart from idle gaps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any, Iterator

from benchmarks.common import median, print_table, write_results
from benchmarks.latency_server import draw_latency, tag

QUESTION = "Could you tell me which dates and what budget you have in mind?"
MODES = ("async", "sync")
# (policy median s, policy sigma, simulator median s, simulator sigma) per latency model
LATENCY_MODELS = {"fixed": (0.5, 0.0, 1.0, 0.0), "heavy": (0.5, 0.5, 1.0, 1.0)}
QUICK_MODELS = {"fixed": (0.05, 0.0, 0.1, 0.0), "heavy": (0.05, 0.5, 0.1, 1.0)}


class ContinuousBatchingStandIn:
    """A rollout-backend stand-in for a continuous-batching server: each prompt takes its own
    drawn latency (a request returns when its slowest prompt is done, as a batch would) and is
    answered with the tagged question for its episode and turn. Episodes are told apart by the
    first ``prefix`` ids of their opening prompts, which the benchmark makes unique."""

    def __init__(self, tokenizer: Any, openings: list[list[int]], turns: int, median_s: float, sigma: float) -> None:
        self.median_s, self.sigma = median_s, sigma
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.prefix = next(p for p in range(1, min(map(len, openings)) + 1)
                           if len({tuple(o[:p]) for o in openings}) == len(openings))
        self.episode_of = {tuple(o[:self.prefix]): e for e, o in enumerate(openings)}
        self.tokenizer, self.end_of_turn, self.turns = tokenizer, end_of_turn, turns
        self.seed = 0
        self.replies: list[list[list[int]]] = []
        self.latencies: list[list[float]] = []
        self.next_turn: list[int] = []

    def prepare(self, seed: int) -> None:
        """Tokenise every (episode, turn) reply and draw its latency for draw seed ``seed``
        (outside the timing: a policy server's own work is not the client's CPU)."""
        self.seed = seed
        self.next_turn = [0] * len(self.episode_of)
        episodes = range(len(self.episode_of))
        self.replies = [
            [self.tokenizer.encode(f"Question {tag(seed, e, t)}: {QUESTION}", add_special_tokens=False)
             + [self.end_of_turn] for t in range(self.turns)]
            for e in episodes
        ]
        self.latencies = [[draw_latency(seed, e, t, "policy", self.median_s, self.sigma) for t in range(self.turns)]
                          for e in episodes]

    async def generate(self, request: Any) -> Any:
        from userrl_core.types import GenerationResult

        ids, latency = [], 0.0
        for prompt in request.prompts:
            episode = self.episode_of[tuple(prompt[:self.prefix])]
            turn = self.next_turn[episode]
            self.next_turn[episode] += 1
            latency = max(latency, self.latencies[episode][turn])
            ids.append(self.replies[episode][turn][: request.max_new_tokens])
        await asyncio.sleep(latency)
        return GenerationResult(token_ids=ids, logprobs=None)

    def sync_weights(self, source: Any) -> None:
        return None


def turn_costs(seed: int, episodes: int, turns: int, model: tuple[float, float, float, float]) -> list[list[float]]:
    """``cost[e][t] = policy + max(reply, judge)``: the least time turn t of episode e takes."""
    p_median, p_sigma, s_median, s_sigma = model
    return [[draw_latency(seed, e, t, "policy", p_median, p_sigma)
             + max(draw_latency(seed, e, t, "reply", s_median, s_sigma),
                   draw_latency(seed, e, t, "judge", s_median, s_sigma)) for t in range(turns)]
            for e in range(episodes)]


@contextlib.contextmanager
def latency_server(median_s: float, sigma: float) -> Iterator[str]:
    """Start ``benchmarks.latency_server`` in its own process; yields its ``/v1`` base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency_server", "--latency", str(median_s), "--sigma", str(sigma)],
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


def build(episodes: int, turns: int, base_url: str, transport: str, model: tuple[float, float, float, float]):
    """One engine per mode (same simulator, same stand-in policy) and E distinct tasks."""
    from transformers import AutoTokenizer

    from userrl_core.config.schema import RunConfig
    from userrl_core.data import load_tasks
    from userrl_core.models import resolve_model_path
    from userrl_core.plugins import get_plugin_manager
    from userrl_core.rollout import RolloutEngine
    from userrl_plugins.intentiongym.tasks import DATA_DIR
    from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

    registry = get_plugin_manager().registry
    rows = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", registry).tasks
    # one task per episode (n = 1): rows repeat when E exceeds them, each with a reference number
    # at the start of its system message, so the stand-in can tell every episode apart
    tasks = []
    for e in range(episodes):
        row = rows[e % len(rows)]
        prompt = [dict(m) for m in row.prompt]
        prompt[0]["content"] = f"Ref {e}. " + prompt[0]["content"]
        tasks.append(replace(row, prompt=prompt))
    settings = {"action_format": "plain_text", "n": 1, "max_turns": turns, "max_new_tokens": 48,
                "max_episode_tokens": 16384}
    simulator_settings = {"name": "litellm", "model": "openai/bench-simulator", "api_base": base_url,
                          "max_concurrency": 2 * episodes, "timeout": 600.0, "num_retries": 0,
                          "extra": {"transport": transport}}
    configs = {mode: RunConfig(model={"path": "unused"}, data={"train_files": ["unused"]},
                               rollout={**settings, "mode": mode}, simulator=simulator_settings,
                               env={"IntentionGym": {"max_turns": max(turns, 15)}})
               for mode in MODES}
    simulator = build_litellm_simulator(config=configs["async"].simulator)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path("builtin:smollm2-135m-instruct")))
    # the backend is set after the engines exist: the stand-in needs their opening prompt ids
    placeholder = _TokenizerOnly(tokenizer)
    engines = {mode: RolloutEngine(placeholder, registry, simulator, configs[mode]) for mode in MODES}
    openings = [engines["async"].tokens.prompt_ids(t.prompt) for t in tasks]
    policy = ContinuousBatchingStandIn(tokenizer, openings, turns, model[0], model[1])
    for engine in engines.values():
        engine.backend = policy
    return engines, policy, simulator, tasks


class _TokenizerOnly:
    """What the engine reads from a backend while it is built: the tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer


def run_once(engine: Any, policy: ContinuousBatchingStandIn, tasks: list, seed: int, loop: str) -> dict[str, float]:
    """One engine.run at draw seed ``seed``; its wall time, client CPU time and phase timings."""
    from userrl_core import event_loop

    policy.prepare(seed)

    async def go():
        started, cpu = time.perf_counter(), time.process_time()
        result = await engine.run(tasks, 1, seed=seed)
        return time.perf_counter() - started, time.process_time() - cpu, result

    if loop == "uvloop":
        wall, cpu, result = event_loop.run(go())
    else:
        wall, cpu, result = asyncio.run(go())
    failed = [e for e in result.episodes if e.status.value != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(result.episodes)} episodes failed: {failed[0].error}")
    turns = sum(len(e.turns) for e in result.episodes)
    return {"wall_s": wall, "cpu_s": cpu, "turns": turns, "cpu_ms_per_episode_turn": 1000 * cpu / turns,
            "generate_s": result.metrics.get("timing_s/generate", 0.0), "env_s": result.metrics.get("timing_s/env", 0.0),
            "generate_calls": result.metrics.get("rollout/generate_calls", 0.0)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Rollout orchestration efficiency (item 1).")
    parser.add_argument("--quick", action="store_true", help="smoke run: E = 8, T = 2, latencies / 10, 1 repeat")
    parser.add_argument("--episodes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--latency", choices=sorted(LATENCY_MODELS), nargs="+", default=["fixed", "heavy"])
    parser.add_argument("--modes", choices=MODES, nargs="+", default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sync-repeats", type=int, default=None,
                        help="repeats of the sync mode (default: --repeats); its heavy-tailed runs "
                             "take about 3x the async ones, so fewer keep the whole benchmark short")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="event loop of the client (uvloop: as userrl runs)")
    parser.add_argument("--transport", choices=["direct", "litellm", "auto"], default="auto",
                        help="simulator.extra.transport of the litellm plugin")
    parser.add_argument("--latency-scale", type=float, default=1.0,
                        help="multiply every median latency (0.1: the same rollout with its events ten "
                             "times denser in time, to see the client's CPU apart from idle-gap effects)")
    args = parser.parse_args(argv)
    models = LATENCY_MODELS
    if args.quick:
        args.episodes, args.turns, args.repeats = [8], 2, 1
        models = QUICK_MODELS
    if args.latency_scale != 1.0:
        models = {k: (p * args.latency_scale, ps, s * args.latency_scale, ss) for k, (p, ps, s, ss) in models.items()}

    sync_repeats = args.repeats if args.sync_repeats is None else min(args.sync_repeats, args.repeats)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows, records = [], []
    for name in args.latency:
        model = models[name]
        with latency_server(model[2], model[3]) as base_url:
            for episodes in args.episodes:
                engines, policy, simulator, tasks = build(episodes, args.turns, base_url, args.transport, model)
                run_once(engines["async"], policy, tasks[:2], seed=10_000, loop=args.loop)  # warm-up
                runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in args.modes}
                bounds, floors = [], []
                for k in range(args.repeats):  # the modes alternate, each repeat on its own draws
                    costs = turn_costs(k, episodes, args.turns, model)
                    bounds.append(max(sum(c) for c in costs))
                    floors.append(sum(max(c[t] for c in costs) for t in range(args.turns)))
                    for mode in args.modes:
                        if mode == "sync" and k >= sync_repeats:
                            continue
                        run = run_once(engines[mode], policy, tasks, seed=k, loop=args.loop)
                        run["bound_s"], run["efficiency"] = bounds[-1], bounds[-1] / run["wall_s"]
                        runs[mode].append(run)
                for mode in args.modes:
                    record = {
                        "latency": name, "episodes": episodes, "turns": args.turns, "mode": mode,
                        "repeats": len(runs[mode]),
                        "transport": simulator.transport, "loop": args.loop,
                        "bound_s": bounds, "median_bound_s": median(bounds), "sync_floor_s": floors,
                        "median_wall_s": median([r["wall_s"] for r in runs[mode]]),
                        "efficiency": median([r["efficiency"] for r in runs[mode]]),
                        "median_bound_s_of_its_repeats": median([r["bound_s"] for r in runs[mode]]),
                        "cpu_ms_per_episode_turn": median([r["cpu_ms_per_episode_turn"] for r in runs[mode]]),
                        "runs": runs[mode],
                    }
                    records.append(record)
                    rows.append([name, episodes, mode, len(runs[mode]), record["median_bound_s_of_its_repeats"], median(floors),
                                 record["median_wall_s"], record["efficiency"], record["cpu_ms_per_episode_turn"]])
                    print(f"{name} E={episodes} {mode}: wall {record['median_wall_s']:.1f} s, efficiency "
                          f"{record['efficiency']:.3f}, CPU {record['cpu_ms_per_episode_turn']:.2f} ms", flush=True)

    print_table(
        f"Rollout efficiency, {args.turns} turns, medians over the repeats (efficiency = makespan bound / wall)",
        ["latency", "episodes", "mode", "repeats", "bound s", "sync floor s", "wall s", "efficiency", "client CPU ms / episode-turn"],
        rows,
    )
    payload = {"settings": vars(args), "latency_models": {k: models[k] for k in args.latency}, "results": records}
    stem = ("bench_rollout_efficiency" + ("" if args.transport == "auto" else f"_{args.transport}")
            + ("" if args.latency_scale == 1.0 else f"_scale{args.latency_scale:g}"))
    path = write_results("bench_rollout_efficiency", payload, file_stem=stem)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
