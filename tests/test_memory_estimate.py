"""The per-GPU memory estimate against real measurements.

``benchmarks/results/gpu_smoke_h200.json`` is one run of ``benchmarks/gpu_smoke.py`` on one
NVIDIA H200 (torch 2.11, transformers 5.17): ``torch.cuda.max_memory_allocated`` of every phase
for Qwen3-0.6B and Qwen3-4B. The estimate is recomputed here with today's code from the run's
``settings`` and the shapes in ``benchmarks/model_shapes/``, and must land within
``TOLERANCE`` of each measured phase.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from userrl_core.preflight.memory_estimate import GB, phase_estimate_bytes, shape_from_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_smoke_h200.json"
TOLERANCE = 0.15  # |measured / estimate - 1|, as docs/scaling.md states

RUN = json.loads(RESULTS.read_text())
PHASES = [p for p in RUN["phases"] if p.get("status") == "ok" and "max_memory_allocated_gib" in p.get("memory", {})]


def test_every_phase_of_the_h200_run_is_checked():
    assert {(p["shape"], p["phase"]) for p in PHASES} == {
        (s, ph) for s in ("qwen3-0.6b", "qwen3-4b") for ph in ("fsdp", "fsdp_offload", "transformers")}


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: f"{p['shape']}-{p['phase']}")
def test_estimate_within_tolerance_of_measured_peak(phase):
    name = phase["shape"]
    config = json.loads((ROOT / "benchmarks" / "model_shapes" / f"{name}.json").read_text())
    shape = shape_from_config(config, name=name, source="benchmarks/model_shapes")
    assert shape.num_params == phase["parameters"]  # the shape file is the model that was measured
    settings = RUN["settings"]
    estimated = phase_estimate_bytes(shape, phase["phase"], micro_batch=settings["micro"], seq_len=settings["seq"]) / GB
    measured = phase["memory"]["max_memory_allocated_gib"]
    assert abs(measured / estimated - 1) <= TOLERANCE, f"{name} {phase['phase']}: measured {measured} GiB, estimated {estimated:.2f} GiB"
