"""benchmarks/gpu_smoke.py in its CPU mode: the same phases as on a GPU, tiny Qwen3 shape.

The script runs as a real subprocess, as ``make gpu-smoke`` runs it on a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_smoke.py"


def test_cpu_mode_runs_every_phase_through_the_real_backends(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    phases = {p["phase"]: p for p in data["phases"]}
    assert set(phases) == {"fsdp", "fsdp_offload", "transformers"}
    assert all(p["status"] == "ok" for p in phases.values()), [p.get("error") for p in phases.values()]
    for name in ("fsdp", "fsdp_offload", "transformers"):
        # lr 1e-6 with bf16 compute: fp32 master weights move (bf16 weights would not)
        assert phases[name]["weights_changed_fraction_after_one_update"] > 0.5, name
    for name in ("fsdp", "fsdp_offload"):
        phase = phases[name]
        assert phase["process_group"] == "gloo"
        assert phase["update"]["tokens_per_s"] > 0 and phase["update"]["mfu_vs_matmul"] > 0
        assert phase["full_state_dict"]["dtypes"] == ["bfloat16"] and not phase["full_state_dict"]["has_tied_lm_head"]
        assert phase["hf_save"]["gib"] > 0
        assert phase["dcp"]["zeroed_param_restored"] is True
        assert phase["estimate"]["training_peak_gib"] >= 0
    offloaded = phases["fsdp_offload"]["estimate"]["cpu_gib_per_rank"]
    assert {"parameters", "gradients", "optimizer state"} <= set(offloaded)  # the estimate of the same switches
    assert phases["transformers"]["generate"]["new_tokens"] > 0
    assert phases["transformers"]["generate"]["logprobs_finite"]
    assert data["imported_but_not_needed"] == []  # no rich, litellm, ray, hydra, omegaconf, matplotlib
    assert "2*N*B*S" in data["flop_formula"] and data["matmul_ceiling"]["tflops"] > 0
    assert "MFU" in proc.stdout.splitlines()[-2] or "MFU" in proc.stdout


def test_time_budget_skips_phases_and_says_so(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--time-budget", "0",
                           "--min-phase-seconds", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [p["status"] for p in data["phases"]] == ["skipped"] * 3
    assert all("time budget" in p["reason"] for p in data["phases"])


def test_imports_from_a_checkout_that_is_not_installed(tmp_path):
    """A bare GPU machine has no ``pip install -e .``: the script maps plugins/ to
    ``userrl_plugins`` itself. Here the editable install's finder is removed first."""
    code = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})]
import importlib.util
assert importlib.util.find_spec("userrl_plugins") is None, "the installed package is still visible"
import runpy
runpy.run_path({str(SCRIPT)!r}, run_name="gpu_smoke")
import userrl_plugins.backends.fsdp_backend as fsdp
print(fsdp.__file__)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith(str(Path("plugins") / "backends" / "fsdp_backend.py"))
    assert proc.stdout.strip().startswith(str(REPO))
