"""Where a step's numbers go: ``metrics.jsonl``, transcripts, the console, and wandb.

Metric names follow verl/UserRL where one exists (``critic/score/mean``,
``val-core/<data_source>/reward/mean@1``, ``actor/entropy``), so dashboards carry over.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable

from userrl_core.rollout.summary import ENV_ERROR_KEY, SIMULATOR_ERROR_KEY
from userrl_core.types import Episode, EpisodeStatus

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def turn_failed(turn: Any) -> bool:
    """The environment step of this turn failed (its simulator call or judge gave up, or the
    environment's own code raised or returned an invalid step)."""
    info = turn.info or {}
    return SIMULATOR_ERROR_KEY in info or ENV_ERROR_KEY in info


def episode_record(step: int, episode: Episode) -> dict[str, Any]:
    """One transcript line: the episode as a person would read it. A turn whose environment
    step failed has ``reward: null`` (the environment gave none; 0.0 would read as a score)."""
    return {
        "step": step,
        "task_id": episode.task.id,
        "data_source": episode.task.data_source,
        "env_name": episode.task.env_name,
        "group": episode.group,
        "sample": episode.sample,
        "status": episode.status.value,
        "end_reason": episode.end_reason,
        "error": episode.error,
        "score": episode.metrics.get("score"),
        "metrics": episode.metrics,
        "turns": [
            {
                "text": t.text,
                "action": None if t.action is None else {"choice": t.action.choice, "content": t.action.content},
                "reward": None if turn_failed(t) else t.reward,
                "observation": t.observation,
                "invalid": t.invalid,
                "no_action": t.no_action,
                "info": t.info,
            }
            for t in episode.turns
        ],
        "messages": episode.messages,
    }


class RunRecorder:
    """Appends metrics lines and transcripts to the run folder, and mirrors to wandb."""

    def __init__(self, run_dir: Path, config: Any, *, wandb_enabled: bool = False, wandb_mode: str = "offline"):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.transcripts_dir = self.run_dir / "transcripts"
        self.transcripts_dir.mkdir(parents=True, exist_ok=True)
        self._wandb = None
        if wandb_enabled:
            self._wandb = self._start_wandb(config, wandb_mode)

    def _start_wandb(self, config: Any, mode: str) -> Any:
        try:
            import wandb
        except ImportError as exc:
            from userrl_core.errors import MissingRequirementError

            raise MissingRequirementError(
                "logging.wandb.enabled is true but wandb is not installed: pip install 'userrl[wandb]'"
            ) from exc
        return wandb.init(
            project=config.trainer.project_name,
            name=self.run_dir.name,
            dir=str(self.run_dir),
            mode=mode,
            config=config.model_dump(mode="json"),
        )

    def log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        line = {"step": step, "epoch": epoch, "timestamp": time.time()}
        line.update({k: _clean(v) for k, v in sorted(metrics.items())})
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def transcripts(self, name: str, step: int, episodes: Iterable[Episode], limit: int | None) -> Path | None:
        chosen = list(episodes) if limit is None else _spread(list(episodes), limit)
        if not chosen:
            return None
        path = self.transcripts_dir / f"{name}_{step:06d}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for episode in chosen:
                f.write(json.dumps(episode_record(step, episode), default=str) + "\n")
        return path

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def _spread(episodes: list[Episode], limit: int) -> list[Episode]:
    """A few episodes from different groups, failures first (they are the ones to read)."""
    if limit <= 0:
        return []
    failed = [e for e in episodes if e.status is not EpisodeStatus.OK]
    rest = sorted((e for e in episodes if e.status is EpisodeStatus.OK), key=lambda e: (e.sample, e.group))
    return (failed + rest)[:limit]


def simulator_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-step simulator metrics from the simulator's cumulative counters."""
    out = {f"simulator/{k}": float(after.get(k, 0.0)) - float(before.get(k, 0.0)) for k in after}
    calls = out.get("simulator/calls", 0.0)
    out["simulator/errors"] = out.get("simulator/failures", 0.0)
    out["simulator/failure_rate"] = out["simulator/errors"] / calls if calls else 0.0
    return out


def console_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """The one-line step summary printed to the console."""
    keys = [
        ("score", "critic/score/mean"),
        ("turns", "rollout/turns/mean"),
        ("cov", "env/coverage/mean"),
        ("invalid", "rollout/invalid_action_rate"),
        ("loss", "actor/pg_loss"),
        ("ent", "actor/entropy"),
        ("gnorm", "actor/grad_norm"),
        ("sim_err", "simulator/errors"),
        ("s/step", "perf/time_per_step"),
    ]
    parts = [f"step {step}/{total}"]
    for label, key in keys:
        if key in metrics and metrics[key] is not None:
            parts.append(f"{label} {metrics[key]:.3g}")
    val = {k: v for k, v in metrics.items() if k.startswith("val-core/")}
    for key, value in sorted(val.items()):
        parts.append(f"{key} {value:.3f}")
    return " | ".join(parts)
