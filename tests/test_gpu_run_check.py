"""The end-to-end device check's recipe validates, and its overrides point at this checkout's data."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.gpu_run_check import DEFAULT_RECIPE, FUNCTIONGYM_DATA, run_overrides  # noqa: E402


def test_the_recipe_passes_dry_run_with_the_scripts_overrides(tmp_path):
    overrides = run_overrides(tmp_path, "cpu", "float32", "transformers", 2)
    proc = subprocess.run([sys.executable, "-m", "userrl_core.cli", "run", "--dry-run", str(DEFAULT_RECIPE),
                           *overrides], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "total steps: 2" in proc.stdout
    assert str(FUNCTIONGYM_DATA / "train.parquet") in proc.stdout
