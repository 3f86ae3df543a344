"""Item 1 (context): the CPU one unit of the rollout client's work costs, back to back and with
idle gaps between units.

The rollout efficiency benchmark measures the client's CPU per episode-turn with the process's
CPU clock. With heavy-tailed latencies the same rollout spreads its events over a longer time
than with fixed ones, and on small virtual machines a burst of Python work that starts after
the process has slept runs slower (caches, branch predictors and TLBs refilled after other
work or idleness). This benchmark measures that effect on its own: one unit of the client's
real per-turn work (the continuation ids of a simulator reply, the JSON of a chat request, the
redaction of a reply, the parse of a judge verdict), timed with the thread's CPU clock, run
``--units`` times per gap with the thread sleeping ``gap`` between units.

Usage::

    python -m benchmarks.bench_idle_gaps                 # gaps 0, 0.2, 1, 2, 5, 20 ms; 400 units each; 3 repeats
    python -m benchmarks.bench_idle_gaps --quick         # 50 units, 2 gaps
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from benchmarks.common import median, print_table, write_results

REPLY = ("I'd like to go sometime in May, maybe the 3rd to the 5th, and my budget is around 800 dollars "
         "for the whole trip, flights included.")
JUDGE_REPLY = ('{"analysis": "The question asks about the dates and the budget.", "is_task_related": true, '
               '"covered_detail_indices": [0, 2]}')


def work_unit() -> Callable[[], Any]:
    """One episode-turn's worth of the client's own code paths (without the network)."""
    import orjson
    from transformers import AutoTokenizer

    from userrl_core.bounded_json import json_objects
    from userrl_core.models import resolve_model_path
    from userrl_core.redaction import redact
    from userrl_core.rollout.tokens import ChatTokens

    tokens = ChatTokens(AutoTokenizer.from_pretrained(str(resolve_model_path("builtin:smollm2-135m-instruct"))))
    history = [{"role": "system", "content": "You ask clarifying questions before you help. " * 8},
               {"role": "user", "content": "Plan a weekend trip for me."},
               {"role": "assistant", "content": "Which dates and what budget do you have in mind?"}]
    request = {"model": "simulator", "temperature": 0.7, "max_tokens": 256,
               "messages": [{"role": "system", "content": "You play a person who asked for help. " * 30},
                            {"role": "user", "content": "Conversation so far: " + REPLY * 8}]}

    def unit() -> Any:
        ids = tokens.continuation_ids(history, [{"role": "user", "content": REPLY}], turn_closed=True)
        body = orjson.dumps(request)
        orjson.loads(body)
        text = redact(REPLY) + redact(JUDGE_REPLY)
        verdict = list(json_objects(JUDGE_REPLY))
        return ids, text, verdict

    return unit


def measure(unit: Callable[[], Any], gap_s: float, units: int) -> float:
    """Median thread CPU microseconds of one unit, with ``gap_s`` of sleep before each."""
    times = []
    for _ in range(units):
        if gap_s:
            time.sleep(gap_s)
        started = time.thread_time_ns()
        unit()
        times.append((time.thread_time_ns() - started) / 1000)
    return median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="CPU of the client's per-turn work with idle gaps.")
    parser.add_argument("--quick", action="store_true", help="50 units, gaps 0 and 5 ms, 1 repeat")
    parser.add_argument("--gaps-ms", type=float, nargs="+", default=[0, 0.2, 1, 2, 5, 20])
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.units, args.gaps_ms, args.repeats = 50, [0, 5], 1

    unit = work_unit()
    for _ in range(200):  # warm every cache the unit uses (pieces, frames, the tokenizer's)
        unit()
    runs: dict[float, list[float]] = {gap: [] for gap in args.gaps_ms}
    for _ in range(args.repeats):  # the gaps alternate, so a change of machine load hits all alike
        for gap in args.gaps_ms:
            runs[gap].append(measure(unit, gap / 1000, args.units))
    back_to_back = median(runs[args.gaps_ms[0]])
    rows, records = [], []
    for gap in args.gaps_ms:
        value = median(runs[gap])
        records.append({"gap_ms": gap, "median_us": value, "repeats_us": runs[gap], "ratio": value / back_to_back})
        rows.append([gap, value, value / back_to_back])
    print_table(f"CPU of one unit of client work, median of {args.repeats} medians of {args.units} units",
                ["gap ms", "CPU us", f"ratio to gap {args.gaps_ms[0]:g} ms"], rows)
    payload = {"settings": vars(args), "results": records}
    path = write_results("bench_idle_gaps", payload)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
