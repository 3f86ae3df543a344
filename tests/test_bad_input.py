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
