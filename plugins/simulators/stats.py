"""Cumulative call counters that every built-in simulator keeps.

The trainer reads ``stats()`` after each step and diffs consecutive readings into the
``simulator/*`` metrics (calls, errors, retries, tokens, cost), so counters only ever grow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SimulatorStats:
    """Counters since the simulator was built. ``failures`` are calls that raised
    ``SimulatorError`` after all retries; ``unpriced_calls`` are successful calls whose model
    has no known price (their cost counts as 0)."""

    calls: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    unpriced_calls: int = 0

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}
