"""The rollout's CPU savings change nothing observable: the collector settings come back after a
rollout (also when it raises), the re-tokenisation check samples a bounded, evenly spaced set of
episodes, and the event-loop runner still returns the coroutine's result."""

from __future__ import annotations

import gc

import pytest

from userrl_core import event_loop
from userrl_core.rollout.engine import RETOKENIZATION_CHECKS, retokenization_sample
from userrl_core.rollout.gc_pause import YOUNG_THRESHOLD, rollout_collections


def test_collector_settings_are_restored_even_after_an_error():
    before = gc.get_threshold()
    kept = [object()]  # alive before the rollout: frozen during it
    with pytest.raises(RuntimeError):
        with rollout_collections():
            assert gc.get_freeze_count() >= 1
            assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
            with rollout_collections():  # nested: the outer block stays in charge
                pass
            assert gc.get_freeze_count() >= 1 and gc.get_threshold()[0] >= YOUNG_THRESHOLD
            raise RuntimeError("boom")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert kept


def test_cycles_made_during_a_rollout_are_still_collected():
    class Node:
        pass

    with rollout_collections():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2  # the young objects are not frozen


@pytest.mark.parametrize("episodes", [0, 1, 7, RETOKENIZATION_CHECKS, RETOKENIZATION_CHECKS + 1, 256, 1024, 1000])
def test_retokenization_sample_is_bounded_and_even(episodes):
    sample = list(retokenization_sample(episodes))
    assert len(sample) == min(episodes, RETOKENIZATION_CHECKS) or (
        episodes > RETOKENIZATION_CHECKS and len(sample) <= RETOKENIZATION_CHECKS)
    assert all(0 <= i < episodes for i in sample) and sample == sorted(set(sample))
    if episodes:
        assert sample[0] == 0
        gaps = {b - a for a, b in zip(sample, sample[1:])}
        assert len(gaps) <= 1  # evenly spaced
        assert len(sample) >= min(episodes, RETOKENIZATION_CHECKS // 2)


def test_event_loop_run_returns_the_result_and_raises_the_error():
    async def value():
        return {"episodes": list(range(3))}

    async def broken():
        raise ValueError("nope")

    assert event_loop.run(value()) == {"episodes": [0, 1, 2]}
    with pytest.raises(ValueError, match="nope"):
        event_loop.run(broken())
