"""The one number a validation pass is judged by.

Validation logs ``val-core/<data_source>/reward/mean@<n>`` per data source. The run's validation
reward (what "best checkpoint", the stability guard, the report and ``userrl eval`` compare) is
that value for a single data source, and the unweighted mean over data sources when several
validate, so each data source counts once whatever its size.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

VAL_REWARD_KEY = re.compile(r"^val-core/(?P<source>.+)/reward/mean@(?P<n>\d+)$")


def validation_rewards_by_source(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{data_source: reward}`` from one metrics line; with several ``@n`` for a source, the largest n."""
    chosen: dict[str, tuple[int, float]] = {}
    for key, value in metrics.items():
        match = VAL_REWARD_KEY.match(key)
        if match is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isfinite(float(value)):
            continue
        n = int(match["n"])
        source = match["source"]
        if source not in chosen or n > chosen[source][0]:
            chosen[source] = (n, float(value))
    return {source: value for source, (_, value) in chosen.items()}


def validation_reward(metrics: Mapping[str, Any]) -> float | None:
    """The mean over data sources of ``val-core/<source>/reward/mean@n``; None when none is present."""
    by_source = validation_rewards_by_source(metrics)
    if not by_source:
        return None
    return sum(by_source.values()) / len(by_source)
