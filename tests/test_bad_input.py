"""Values that cannot work are refused before anything heavy runs, with one line naming the key
(finding 10 of the reliability review): each of these was accepted and ran to a "finished" run
with NaN weights, zero-turn episodes or a memory blow-up."""

from __future__ import annotations

import pytest

from support.tiny_runs import ROOT
from userrl_core.config import load_recipe
from userrl_core.errors import ConfigError

QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


@pytest.mark.parametrize("override, key, words", [
    ("actor.lr=inf", "actor.lr", "finite"),
    ("actor.lr=nan", "actor.lr", "finite"),
    ("actor.grad_clip=inf", "actor.grad_clip", "finite"),
    ("rollout.max_episode_tokens=32", "rollout.max_episode_tokens", "0 turns"),
    ("rollout.n=1e8", "rollout.n", "less than or equal to 1024"),
    ("rollout.val_n=5000", "rollout.val_n", "less than or equal to 1024"),
    ("trainer.save_freq=0", "trainer.save_freq", "-1 for only at the end"),
    ("trainer.save_freq=-3", "trainer.save_freq", "-1 for only at the end"),
    ("trainer.test_freq=0", "trainer.test_freq", "-1 for only at the end"),
])
def test_unworkable_values_are_refused_naming_the_key(override, key, words):
    with pytest.raises(ConfigError) as info:
        load_recipe(QUICKSTART, [override])
    message = str(info.value)
    assert key in message and words in message
    assert "{" not in message, "the message must not dump the whole recipe"


def test_minus_one_still_means_only_at_the_end():
    config = load_recipe(QUICKSTART, ["trainer.save_freq=-1", "trainer.test_freq=-1"])
    assert (config.trainer.save_freq, config.trainer.test_freq) == (-1, -1)


def test_a_train_batch_larger_than_the_task_set_is_refused_by_the_plan():
    from userrl_core.training.geometry import plan_geometry

    config = load_recipe(QUICKSTART, ["data.train_batch_size=500", "data.drop_last=false"])
    with pytest.raises(ConfigError, match=r"data.train_batch_size \(500\) is larger than the 380 train tasks"):
        plan_geometry(config, 380)
    geometry, _ = plan_geometry(load_recipe(QUICKSTART, []), 380)
    assert geometry.steps_per_epoch == 95


def test_an_empty_model_folder_is_one_line_naming_the_key(tmp_path):
    """Finding 11 of the reliability review: an existing but empty model folder gave a 34-line
    traceback and exit 1; now `userrl run` stops in the requirements check with exit 2."""
    import subprocess
    import sys

    empty = tmp_path / "model"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "userrl_core.cli", "run", QUICKSTART, f"model.path={empty}",
                             "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.path" in lines[0] and "config.json" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_non_finite_update_stops_the_run_before_a_checkpoint():
    """Finding 10: NaN/inf in the update's loss or gradient norm stops the run (status
    stopped, exit 3) before the checkpoint of that step is written."""
    from types import SimpleNamespace

    from userrl_core.errors import RunStopped
    from userrl_core.training.trainer import Trainer

    fake = SimpleNamespace(step=4)
    Trainer._check_finite_update(fake, {"actor/pg_loss": 0.25, "actor/grad_norm": 1.5, "critic/score/mean": 0.1})
    with pytest.raises(RunStopped, match=r"step 4: .*actor/grad_norm, actor/pg_loss.*before writing a checkpoint"):
        Trainer._check_finite_update(fake, {"actor/pg_loss": float("nan"), "actor/grad_norm": float("inf")})
