"""How often the offline ``local`` judge agrees with IntentionGym's own example inquiries.

For every task of a split and every missing detail ``d`` of it, the detail's example inquiry is
asked as the agent's question, with all of the task's details still missing (the judge's view
at turn 1):

* **agreement**: ``d`` is judged covered (the issue's criterion: a question equal to a
  detail's inquiry should cover that detail);
* **false positives**: the share of the task's *other* details judged covered by that question;
  **paraphrase false positives**: the same in the paraphrase view below;
* **paraphrase recall**: ``d`` is judged covered when its own inquiry text is hidden from the
  judge (only its description is compared). A verbatim inquiry matches itself with cosine 1,
  so this stricter figure is the one that shows how the threshold treats questions that are
  worded differently from the data, as an agent's are.

The threshold and the relative margin (``LocalSimulator.covered``) are chosen on the train split
(maximising paraphrase recall minus false-positive rate) and reported on the validation split (the 40 UserRL test tasks). Judge latency per call
is measured through ``LocalSimulator.complete`` on this machine's CPU, with a cold and a warm
embedding cache.

Run: ``python benchmarks/judge_agreement.py [--write-docs]``; ``--write-docs`` replaces the
table between the ``judge-agreement`` markers in docs/simulators.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from userrl_core.config.schema import SimulatorConfig
from userrl_core.types import SimulatorRequest
from userrl_plugins.intentiongym.tasks import DATA_DIR, IntentionTask, default_bank
from userrl_plugins.simulators.embeddings import SentenceEncoder
from userrl_plugins.simulators.local_simulator import Detail, LocalSimulator

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "simulators.md"
START, END = "<!-- judge-agreement:start -->", "<!-- judge-agreement:end -->"
THRESHOLDS = [round(float(x), 2) for x in np.arange(0.40, 0.86, 0.05)]
MARGINS: list[float | None] = [None, 0.10, 0.05, 0.02]


@dataclass
class Probe:
    """Similarities of every detail of a task to the question that is one detail's inquiry:
    ``seen`` as the judge sees them, ``hidden`` with the asked detail's inquiry replaced by its
    description (the paraphrase view)."""

    asked: int
    seen: dict[int, float]
    hidden: dict[int, float]


def covered(scores: dict[int, float], threshold: float, margin: float | None) -> set[int]:
    """The local judge's rule (``LocalSimulator.covered``) on precomputed scores."""
    best = max(scores.values())
    floor = best - margin if margin is not None else -np.inf
    return {n for n, s in scores.items() if s > threshold and s >= floor}


def split_tasks(split: str) -> list[IntentionTask]:
    rows = pq.read_table(DATA_DIR / "userrl_splits" / f"{split}.parquet").to_pylist()
    bank = default_bank()
    return [bank.get(row["reward_model"]["id"]) for row in rows]


def details_of(task: IntentionTask) -> list[Detail]:
    return [Detail(i + 1, d.description, d.inquiry or d.description, tuple(d.options))
            for i, d in enumerate(task.missing_details)]


async def probe(sim: LocalSimulator, tasks: list[IntentionTask]) -> list[Probe]:
    probes = []
    for task in tasks:
        details = details_of(task)
        for asked in details:
            seen = {m.number: m.score for m in await sim.match(asked.inquiry, details)}
            masked = [Detail(d.number, d.description, d.description, d.options) if d.number == asked.number else d
                      for d in details]
            hidden = {m.number: m.score for m in await sim.match(asked.inquiry, masked)}
            probes.append(Probe(asked.number, seen, hidden))
    return probes


def rates(probes: list[Probe], threshold: float, margin: float | None) -> dict[str, float]:
    own, paraphrase, false_pos, paraphrase_fp, others = 0, 0, 0, 0, 0
    for p in probes:
        seen = covered(p.seen, threshold, margin)
        hidden = covered(p.hidden, threshold, margin)
        own += p.asked in seen
        paraphrase += p.asked in hidden
        false_pos += len(seen - {p.asked})
        paraphrase_fp += len(hidden - {p.asked})
        others += len(p.seen) - 1
    return {"agreement": own / len(probes), "paraphrase_recall": paraphrase / len(probes),
            "false_positive_rate": false_pos / others if others else 0.0,
            "paraphrase_false_positive_rate": paraphrase_fp / others if others else 0.0}


def choose(probes: list[Probe]) -> tuple[float, float | None]:
    """The (threshold, margin) that maximises paraphrase recall minus paraphrase false positives;
    thresholds below 0.5 are not considered, so a generic question still covers nothing."""
    grid = [(t, m) for t in THRESHOLDS if t >= 0.5 for m in MARGINS]

    def score(choice: tuple[float, float | None]) -> tuple[float, float]:
        r = rates(probes, *choice)
        return r["paraphrase_recall"] - r["paraphrase_false_positive_rate"], choice[0]

    return max(grid, key=score)


async def judge_latency(encoder: SentenceEncoder, tasks: list[IntentionTask], threshold: float) -> dict[str, float]:
    """Milliseconds per judge call through ``complete``: a cold pass on a fresh cache, then a
    warm pass on the same simulator (details cached, questions new)."""
    sim = LocalSimulator(SimulatorConfig(name="local", local={"judge_threshold": threshold}), encoder=encoder)  # default margin
    questions = {"cold": "Could you tell me more about what you need for: {}",
                 "warm": "What matters most to you in this? ({})"}
    out: dict[str, float] = {}
    for label, question in questions.items():
        times = []
        for turn, task in enumerate(tasks, start=1):
            context = {"env": "IntentionGym", "task": task.task, "turn": turn, "seed": 0,
                       "question": question.format(task.task),
                       "details": [{"number": d.number, "description": d.description, "inquiry": d.inquiry,
                                    "options": list(d.options), "importance": 2} for d in details_of(task)]}
            started = time.perf_counter()
            await sim.complete(SimulatorRequest(purpose="judge", messages=[], context=context,
                                                response_format="json"))
            times.append((time.perf_counter() - started) * 1000)
        out[f"{label}_ms_median"] = statistics.median(times)
        out[f"{label}_ms_p90"] = float(np.percentile(times, 90))
    return out


async def measure() -> dict:
    encoder = SentenceEncoder()
    sim = LocalSimulator(SimulatorConfig(name="local"), encoder=encoder)
    train = await probe(sim, split_tasks("train"))
    val_tasks = split_tasks("test")
    val = await probe(sim, val_tasks)
    threshold, margin = choose(train)
    sweep = [{"threshold": t, "margin": m, "train": rates(train, t, m), "val": rates(val, t, m)}
             for m in MARGINS for t in THRESHOLDS]
    return {
        "chosen": {"threshold": threshold, "margin": margin},
        "train_details": len(train),
        "val_tasks": len(val_tasks),
        "val_details": len(val),
        "sweep": sweep,
        "latency": await judge_latency(encoder, val_tasks, threshold),
    }


def table(result: dict) -> str:
    chosen = result["chosen"]
    lines = [
        f"Measured by `benchmarks/judge_agreement.py` on the {result['val_tasks']} validation tasks "
        f"({result['val_details']} details); threshold and margin chosen on the train split "
        f"({result['train_details']} details): **threshold {chosen['threshold']:.2f}, margin "
        f"{_margin_text(chosen['margin'])}**.",
        "",
        "| threshold | margin | agreement | false positives | paraphrase recall | paraphrase false positives "
        "| paraphrase recall (train) | paraphrase false positives (train) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["sweep"]:
        if row["threshold"] not in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75):
            continue
        mark = " **(default)**" if (row["threshold"], row["margin"]) == (chosen["threshold"], chosen["margin"]) else ""
        v, tr = row["val"], row["train"]
        lines.append(f"| {row['threshold']:.2f}{mark} | {_margin_text(row['margin'])} | {v['agreement']:.1%} | "
                     f"{v['false_positive_rate']:.1%} | {v['paraphrase_recall']:.1%} | "
                     f"{v['paraphrase_false_positive_rate']:.1%} | {tr['paraphrase_recall']:.1%} | "
                     f"{tr['paraphrase_false_positive_rate']:.1%} |")
    lat = result["latency"]
    lines += ["", f"Judge latency per call on CPU (2 cores, shared): median {lat['cold_ms_median']:.1f} ms with a "
                  f"cold cache (p90 {lat['cold_ms_p90']:.1f} ms), {lat['warm_ms_median']:.1f} ms once the task's "
                  f"details are cached (p90 {lat['warm_ms_p90']:.1f} ms)."]
    return "\n".join(lines)


def _margin_text(margin: float | None) -> str:
    return "off" if margin is None else f"{margin:.2f}"


def write_docs(text: str) -> None:
    doc = DOCS.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOCS} has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-docs", action="store_true", help="update the table in docs/simulators.md")
    parser.add_argument("--json", action="store_true", help="print the raw measurements as JSON")
    args = parser.parse_args(argv)
    result = asyncio.run(measure())
    text = table(result)
    print(json.dumps(result, indent=2) if args.json else text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
