"""The benchmark scripts' --quick modes run and report what they measured (not their speed).

Only the fast ones run here; every script's full run is ``make bench`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a folder of scripts at the repository root, not part of the installed package
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("USERRL_BENCH_RESULTS_DIR", str(tmp_path))
    return tmp_path


def test_credit_assignment_quick_agrees_with_the_loop_references(results_dir):
    from benchmarks import bench_credit_assignment

    payload = bench_credit_assignment.main(["--quick"])
    assert payload["max_abs_diff_float64"] <= 1e-6
    assert len(payload["vectorised_s"]) == 3 and payload["speedup"] > 0
    saved = json.loads((results_dir / "bench_credit_assignment.json").read_text())
    assert saved["shape"] == "32 x 1024 x 8" and saved["machine"]["cpus"] >= 1


def test_reference_loop_matches_the_formula_on_a_hand_example():
    import torch

    from benchmarks.bench_credit_assignment import reference_loop, reference_turn_masks

    token_turn = torch.tensor([[-1, 0, 0, -1, 1], [-1, 0, -1, -1, -1], [-1, 0, 1, 1, -1]])
    credits = torch.tensor([[1.0, 3.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    scores = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    # group 0: mean 0.5, std 0.7071 -> A = +-0.7071; group 1 is single: A = 0.5 / (1 + 1e-6)
    a = 0.5 / (2 ** 0.5 / 2 + 1e-6)
    scale0 = a * 3 / 5  # credits 1, 1, 3 on three tokens: sum 5, three non-zero tokens
    expected = torch.tensor([[0, scale0, scale0, 0, 3 * scale0], [0, -a, 0, 0, 0], [0, 0, 0, 0, 0]],
                            dtype=torch.float64)
    for fn in (reference_loop, reference_turn_masks):
        assert torch.allclose(fn(token_turn, credits, scores, groups), expected, atol=1e-12)


def test_idle_gaps_quick_measures_every_gap(results_dir):
    from benchmarks import bench_idle_gaps

    payload = bench_idle_gaps.main(["--quick"])
    records = payload["results"]
    assert [r["gap_ms"] for r in records] == [0, 5]
    assert all(r["median_us"] > 0 and len(r["repeats_us"]) == 1 for r in records)
    assert records[0]["ratio"] == 1.0
    assert json.loads((results_dir / "bench_idle_gaps.json").read_text())["results"] == records


def test_rollout_efficiency_quick_runs_real_episodes(results_dir):
    from benchmarks import bench_rollout_efficiency

    payload = bench_rollout_efficiency.main(["--quick"])
    records = payload["results"]
    assert [(r["latency"], r["mode"]) for r in records] == [
        ("fixed", "async"), ("fixed", "sync"), ("heavy", "async"), ("heavy", "sync")]
    for record in records:
        assert record["episodes"] == 8 and record["transport"] == "direct"
        assert record["median_wall_s"] >= record["median_bound_s"]  # nothing can beat the latencies
        assert 0 < record["efficiency"] <= 1
        assert record["runs"][0]["turns"] == 8 * 2
    fixed = records[0]
    assert fixed["median_bound_s"] == pytest.approx(2 * (0.05 + 0.1))
    heavy_async, heavy_sync = records[2:]
    assert heavy_async["bound_s"] == heavy_sync["bound_s"]  # both modes faced the same draws
    assert heavy_sync["sync_floor_s"][0] >= heavy_sync["bound_s"][0]
    assert heavy_async["runs"][0]["generate_calls"] == 8 * 2  # one request per episode-turn
    assert heavy_sync["runs"][0]["generate_calls"] == 2  # one batch per turn

def test_mix_quickstart_reads_the_time_split_from_the_runs_metrics_and_writes_no_machine_paths():
    """bench_mix_quickstart's arithmetic on metrics lines shaped like a run's (a validation-only
    step 0, then training steps): the raw episode-second sums per step, and the rollout's wall time
    split by share; its results hold repository-relative paths only. (Its full run takes minutes:
    docs/benchmarks.md item 7.)"""
    from benchmarks.bench_mix_quickstart import REPOSITORY, time_split, without_machine_paths

    lines = [
        {"step": 0, "val-core/a/reward/mean@1": 0.0},
        {"step": 1, "timing_s/rollout": 10.0, "timing_s/by_source/a/generate": 6.0,
         "timing_s/by_source/a/simulator": 0.0, "timing_s/by_source/a/env_own": 0.0,
         "timing_s/by_source/b/generate": 4.0, "timing_s/by_source/b/simulator": 10.0,
         "timing_s/by_source/b/env_own": 0.0},
        {"step": 2, "timing_s/rollout": 20.0, "timing_s/by_source/a/generate": 10.0,
         "timing_s/by_source/a/simulator": 0.0, "timing_s/by_source/a/env_own": 0.0,
         "timing_s/by_source/b/generate": 10.0, "timing_s/by_source/b/simulator": 20.0,
         "timing_s/by_source/b/env_own": 0.0},
    ]
    raw, wall, steps = time_split(lines)
    assert steps == 2
    assert raw["a"]["generate"] == pytest.approx(8.0) and raw["b"]["simulator"] == pytest.approx(15.0)
    assert wall["a"]["generate"] == pytest.approx((10.0 * 6 / 20 + 20.0 * 10 / 40) / 2)
    assert wall["b"]["simulator"] == pytest.approx((10.0 * 10 / 20 + 20.0 * 20 / 40) / 2)
    assert sum(v for phases in wall.values() for v in phases.values()) == pytest.approx(15.0)  # mean wall time

    inside = str(REPOSITORY / "recipes" / ".." / "data" / "mix.parquet")
    cleaned = without_machine_paths({"files": [inside, "/elsewhere/secret/run.yaml"], "n": 3, "note": "a/b"})
    assert cleaned == {"files": ["recipes/../data/mix.parquet", "run.yaml"], "n": 3, "note": "a/b"}
