"""One validation pass: the validation tasks, ``data.val_batch_size`` at a time, through the
rollout engine, and the ``val-core`` / ``val-aux`` metrics of all their episodes, computed once.

Used by the trainer's validation and by ``userrl eval``, so both batch and score alike.
"""

from __future__ import annotations

from typing import Any

from userrl_core.rollout import validation_metrics
from userrl_core.rollout.progress import RolloutProgress
from userrl_core.types import Episode, Task


async def run_validation(engine: Any, tasks: list[Task], n: int, *, seed: int, batch_size: int | None,
                         progress: RolloutProgress | None = None) -> tuple[list[Episode], dict[str, float]]:
    """Episodes of every task (``n`` each, in task order) and their validation metrics.
    ``batch_size`` tasks run at a time (all at once when None); episode groups are numbered over
    the whole pass, so tasks of different batches never share a group. ``progress`` hears every
    batch's rollout."""
    size = batch_size or max(len(tasks), 1)
    episodes: list[Episode] = []
    for start in range(0, len(tasks), size):
        result = await engine.run(tasks[start:start + size], n, seed=seed, validation=True, progress=progress)
        for episode in result.episodes:
            episode.group += start
        episodes += result.episodes
    return episodes, validation_metrics(episodes, n)
