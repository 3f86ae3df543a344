"""Learning-rate schedules as ``LambdaLR`` factors (multipliers of the peak ``actor.lr``).

Both schedules warm up linearly over ``int(warmup_ratio * total_steps)`` optimizer steps, from
0 at step 0 to 1 at the end of the warm-up (verl's and Hugging Face's convention: the first
update of a warmed-up run uses lr 0). Then:

- ``constant``: 1.
- ``cosine``: ``min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * p))`` where ``p`` is the
  progress through the remaining steps, from 1 down to ``min_lr_ratio`` at ``total_steps``
  (verl's half-cycle cosine with a floor). Steps past ``total_steps`` stay at the floor.

Use with ``torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(...))`` and call
``scheduler.step()`` after every optimizer step.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["SCHEDULES", "lr_lambda", "warmup_steps"]

SCHEDULES = ("constant", "cosine")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: ``int(warmup_ratio * total_steps)``, as verl computes it."""
    return int(warmup_ratio * total_steps)


def lr_lambda(
    kind: str, total_steps: int, warmup_ratio: float = 0.0, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at each optimizer step (0-based).

    :param kind: ``"constant"`` or ``"cosine"`` (``actor.lr_scheduler``).
    :param total_steps: optimizer steps in the whole run (at least 1).
    :param warmup_ratio: fraction of ``total_steps`` spent warming up (``actor.lr_warmup_steps_ratio``).
    :param min_lr_ratio: cosine floor as a fraction of the peak (``actor.min_lr_ratio``); unused
        by ``constant``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1; got {total_steps}")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1]; got {warmup_ratio}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1]; got {min_lr_ratio}")
    warmup = warmup_steps(total_steps, warmup_ratio)
    decay_steps = max(1, total_steps - warmup)

    def warming(step: int) -> float:
        return step / max(1, warmup)

    if kind == "constant":

        def constant(step: int) -> float:
            return warming(step) if step < warmup else 1.0

        return constant

    def cosine(step: int) -> float:
        if step < warmup:
            return warming(step)
        progress = min(1.0, (step - warmup) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return cosine
