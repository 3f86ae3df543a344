"""Cheaper garbage collection while a rollout runs.

A rollout allocates millions of small objects that live for the whole step (messages, token
lists, futures), so CPython's cyclic collector keeps promoting them and its full collections
scan everything the process holds: the tokenizer, the dataset, the previous steps' records.
Measured with 1,024 episodes x 8 turns (docs/benchmarks.md, item 1) that was about a third of
the client's CPU. :func:`rollout_collections` freezes what existed before the rollout (the
collector then never scans it) and collects the young generation less often; both are undone
when the rollout ends, so nothing is kept alive longer than one step.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation collections during a rollout (CPython's default is 700)."""


@contextlib.contextmanager
def rollout_collections() -> Iterator[None]:
    """Freeze the objects alive now and raise the young threshold until the block ends.
    Re-entrant use (a rollout inside a rollout) leaves the outer settings in charge."""
    if gc.get_freeze_count() and getattr(rollout_collections, "_active", False):
        yield
        return
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(YOUNG_THRESHOLD, thresholds[0]), max(50, thresholds[1]), max(100, thresholds[2]))
    rollout_collections._active = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        rollout_collections._active = False  # type: ignore[attr-defined]
        gc.set_threshold(*thresholds)
        gc.unfreeze()
