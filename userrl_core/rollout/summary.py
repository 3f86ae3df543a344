"""Step metrics from finished episodes: rollout statistics, environment metrics and the
per-data-source validation metrics (verl's ``val-core/<data_source>/reward/mean@n``).

Failed episodes (a simulator call failed: ``FAILED``; the environment's own code broke:
``ENV_ERROR``) are counted but left out of every average of rewards and environment metrics:
their trajectories are incomplete and the trainer excludes them too. Environment errors have
their own counters (``rollout/env_errors``, ``rollout/env_error_rate``) so that a bug in an
environment is never mistaken for a simulator outage.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from statistics import fmean
from typing import Iterable

from userrl_core.types import Episode, EpisodeStatus

SIMULATOR_ERROR_KEY = "simulator_error"
"""``Turn.info`` key set on the turn whose environment step failed in the simulator."""

ENV_ERROR_KEY = "env_error"
"""``Turn.info`` key set on the turn whose environment step raised or returned something invalid."""

SOURCE_TIME_PHASES = ("generate", "simulator", "env_own")
"""The phases of ``timing_s/by_source/<data_source>/<phase>``, in :class:`RolloutCounters` order."""


@dataclass
class RolloutCounters:
    """What the engine counts while episodes run (not recoverable from episodes afterwards)."""

    truncated_turns: int = 0  # turns that hit max_new_tokens
    checked_episodes: int = 0  # episodes whose held ids were compared with a fresh rendering
    mismatched_episodes: int = 0  # ... and differed from it
    generate_s: float = 0.0
    env_s: float = 0.0
    total_s: float = 0.0
    generate_calls: int = 0
    mode: str = "sync"  # rollout.mode the episodes ran in
    # per data source: summed episode-seconds [generate, simulator, env_own] (see add_episode_time)
    source_seconds: dict[str, list[float]] = field(default_factory=dict)

    def add_episode_time(self, data_source: str, generate_s: float, simulator_s: float, env_own_s: float) -> None:
        """One finished episode's seconds: waiting for the policy's generate, in simulator calls
        its environment made, and in its environment's own code (reset and steps less those
        calls). Episodes overlap, so these are episode-seconds, not wall time."""
        sums = self.source_seconds.setdefault(data_source, [0.0, 0.0, 0.0])
        for index, seconds in enumerate((generate_s, simulator_s, env_own_s)):
            sums[index] += seconds


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return fmean(values) if values else 0.0


def rollout_metrics(episodes: list[Episode], counters: RolloutCounters) -> dict[str, float]:
    """``rollout/*``, ``response_length/*``, ``prompt_length/*``, ``timing_s/*`` and
    ``env/<metric>/mean`` for one batch of episodes. ``response_length/*`` counts the whole
    response after the opening, simulator replies included, as verl does;
    ``rollout/policy_tokens/*`` only the tokens the policy sampled. ``rollout/mode/<mode>`` (1) names the mode
    they ran in; in async mode ``timing_s/generate`` and ``timing_s/env`` are the wall time during
    which any generation or environment step was running (they overlap).
    ``timing_s/by_source/<data_source>/<phase>`` are summed episode-seconds per data source
    (:meth:`RolloutCounters.add_episode_time`)."""
    turns = [turn for episode in episodes for turn in episode.turns]
    n_turns = len(turns)
    failed = [e for e in episodes if e.status is not EpisodeStatus.OK]
    env_errors = sum(e.status is EpisodeStatus.ENV_ERROR for e in episodes)
    ok = [e for e in episodes if e.status is EpisodeStatus.OK]
    env_steps = sum(1 for t in turns if t.action is not None and not t.invalid)
    failed_steps = sum(1 for t in turns if SIMULATOR_ERROR_KEY in t.info)
    responses = [e.response_length for e in episodes]
    sampled = [e.policy_tokens for e in episodes]
    prompts = [e.prompt_length for e in episodes]
    metrics: dict[str, float] = {
        "rollout/episodes": float(len(episodes)),
        "rollout/turns/mean": _mean(len(e.turns) for e in episodes),
        "rollout/turns/max": float(max((len(e.turns) for e in episodes), default=0)),
        "rollout/invalid_action_rate": sum(t.invalid for t in turns) / n_turns if n_turns else 0.0,
        "rollout/no_action_rate": sum(t.no_action for t in turns) / n_turns if n_turns else 0.0,
        "rollout/truncated_turn_rate": counters.truncated_turns / n_turns if n_turns else 0.0,
        "rollout/failed_episodes": float(len(failed)),
        "rollout/failed_episode_rate": len(failed) / len(episodes) if episodes else 0.0,
        "rollout/env_errors": float(env_errors),
        "rollout/env_error_rate": env_errors / len(episodes) if episodes else 0.0,
        "rollout/env_steps": float(env_steps),
        "rollout/failed_env_steps": float(failed_steps),
        "rollout/failed_env_step_rate": failed_steps / env_steps if env_steps else 0.0,
        "rollout/retokenization_mismatch_rate": (counters.mismatched_episodes / counters.checked_episodes
                                                 if counters.checked_episodes else 0.0),
        "rollout/retokenization_checked_episodes": float(counters.checked_episodes),
        "rollout/episode_tokens/mean": _mean(len(e.token_ids) for e in episodes),
        "response_length/mean": _mean(responses),
        "response_length/max": float(max(responses, default=0)),
        "response_length/min": float(min(responses, default=0)),
        "rollout/policy_tokens/mean": _mean(sampled),
        "rollout/policy_tokens/max": float(max(sampled, default=0)),
        "rollout/policy_tokens/min": float(min(sampled, default=0)),
        "prompt_length/mean": _mean(prompts),
        "prompt_length/max": float(max(prompts, default=0)),
        "timing_s/generate": counters.generate_s,
        "timing_s/env": counters.env_s,
        "timing_s/rollout": counters.total_s,
        "rollout/generate_calls": float(counters.generate_calls),
    }
    metrics[f"rollout/mode/{counters.mode}"] = 1.0
    for source, sums in sorted(counters.source_seconds.items()):
        for phase, seconds in zip(SOURCE_TIME_PHASES, sums):
            metrics[f"timing_s/by_source/{source}/{phase}"] = seconds
    for reason, count in Counter(e.end_reason for e in episodes).items():
        metrics[f"rollout/end/{reason}"] = float(count)
    names = sorted({name for e in ok for name in e.metrics})
    for name in names:
        metrics[f"env/{name}/mean"] = _mean(e.metrics[name] for e in ok if name in e.metrics)
    return metrics


def validation_metrics(episodes: list[Episode], n: int) -> dict[str, float]:
    """verl's validation names per data source: ``val-core/<ds>/reward/mean@<n>`` (the episode
    score) and ``val-aux/<ds>/<metric>/mean@<n>`` for turns and each environment metric.

    Each task's samples are averaged first, then the task means are averaged, so ``mean@n`` is
    the expected score of one sample per task.
    """
    by_source: dict[str, list[Episode]] = defaultdict(list)
    for episode in episodes:
        by_source[episode.task.data_source].append(episode)
    metrics: dict[str, float] = {}
    for source, source_episodes in sorted(by_source.items()):
        ok = [e for e in source_episodes if e.status is EpisodeStatus.OK]
        metrics[f"val-aux/{source}/episodes"] = float(len(source_episodes))
        metrics[f"val-aux/{source}/failed_episodes"] = float(len(source_episodes) - len(ok))
        metrics[f"val-aux/{source}/env_errors"] = float(
            sum(e.status is EpisodeStatus.ENV_ERROR for e in source_episodes))
        values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for e in ok:
            values["reward"][e.group].append(float(e.metrics.get("score", 0.0)))
            values["turns"][e.group].append(float(len(e.turns)))
            for name, value in e.metrics.items():
                if name != "score":
                    values[name][e.group].append(float(value))
        for name, groups in values.items():
            section = "val-core" if name == "reward" else "val-aux"
            metrics[f"{section}/{source}/{name}/mean@{n}"] = _mean(_mean(v) for v in groups.values())
    return metrics
