"""Where a step's numbers go: ``metrics.jsonl``, transcripts, the console, and wandb.

A metric under one of verl's names has verl's meaning (``critic/score/mean``,
``val-core/<data_source>/reward/mean@1``, ``actor/entropy``), so dashboards carry over; ours
have names of their own. docs/metrics.md lists every metric and what it means.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from userrl_core.redaction import redact, redact_config
from userrl_core.rollout.summary import ENV_ERROR_KEY, SIMULATOR_ERROR_KEY
from userrl_core.types import UNUSABLE_REPLIES_KEY, Episode, EpisodeStatus

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


def wandb_has_credentials(environ: dict[str, str] | None = None) -> bool:
    """An online wandb run can log in: ``WANDB_API_KEY`` is set, or ``wandb login`` stored a key
    in ``~/.netrc`` (where wandb keeps it)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY", "").strip():
        return True
    netrc = Path(env.get("NETRC") or Path.home() / ".netrc")
    try:
        return "api.wandb.ai" in netrc.read_text(errors="replace")
    except OSError:
        return False


def wandb_mode_for(requested: str, environ: dict[str, str] | None = None) -> str:
    """``online`` only when it can log in; otherwise ``offline``, with one warning line."""
    if requested == "online" and not wandb_has_credentials(environ):
        log.warning("logging.wandb.mode is online but WANDB_API_KEY is not set (and no `wandb login`): "
                    "logging offline into the run folder; upload later with `wandb sync <run>/wandb/offline-run-*`")
        return "offline"
    return requested


class RunRecorder:
    """Appends metrics lines and transcripts to the run folder, and mirrors to wandb.

    Every text that reaches a file passes through :func:`~userrl_core.redaction.redact`. wandb
    gets the same metrics as ``metrics.jsonl``, the config with secret-named settings masked,
    and at the end the report's plots as images; it never captures the console (which would
    bypass redaction). A wandb that cannot start is one warning line, never a crashed run.
    """

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
        mode = wandb_mode_for(mode)
        try:
            return wandb.init(
                project=config.trainer.project_name,
                name=self.run_dir.name,
                dir=str(self.run_dir),
                mode=mode,
                config=redact_config(config.model_dump(mode="json")),
                settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False),
            )
        except Exception as exc:  # a logging service must not take the training run down
            log.warning("wandb did not start (%s: %s); training continues without it (metrics.jsonl has everything)",
                        type(exc).__name__, redact(str(exc)))
            return None

    def truncate_after(self, step: int) -> int:
        """Drop ``metrics.jsonl`` lines past ``step`` (a resumed run redoes those steps); they are
        kept in ``metrics.discarded.jsonl``. Returns how many lines were dropped."""
        if not self.metrics_path.is_file():
            return 0
        kept, dropped = [], []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                line_step = json.loads(line).get("step")
            except ValueError:
                dropped.append(line)  # a line torn by the crash
                continue
            (dropped if isinstance(line_step, int) and line_step > step else kept).append(line)
        if dropped:
            with (self.run_dir / "metrics.discarded.jsonl").open("a", encoding="utf-8") as f:
                f.write("\n".join(dropped) + "\n")
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.metrics_path)
        return len(dropped)

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
                f.write(redact(json.dumps(episode_record(step, episode), default=str)) + "\n")
        return path

    def close(self, plots: Iterable[Path] = ()) -> None:
        """Finish wandb, attaching ``plots`` (the report's PNGs) as images."""
        if self._wandb is None:
            return
        try:
            import wandb

            images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots if p.is_file()}
            if images:
                self._wandb.log(images)
            self._wandb.finish()
        except Exception as exc:
            log.warning("wandb did not finish cleanly (%s: %s); metrics.jsonl has everything",
                        type(exc).__name__, redact(str(exc)))
        self._wandb = None


def _spread(episodes: list[Episode], limit: int) -> list[Episode]:
    """A few episodes from different groups, failures first (they are the ones to read)."""
    if limit <= 0:
        return []
    failed = [e for e in episodes if e.status is not EpisodeStatus.OK]
    rest = sorted((e for e in episodes if e.status is EpisodeStatus.OK), key=lambda e: (e.sample, e.group))
    return (failed + rest)[:limit]


def count_failed_turns(metrics: dict[str, float], episodes: Iterable[Episode], prefix: str = "simulator/") -> None:
    """Make the simulator metrics count every failure, in place.

    A simulator call can fail in two ways: it raises after its retries (the simulator counts
    it), or its reply cannot be used and the environment re-asks, then gives up (only the
    environment sees it; it reports ``StepResult.info[UNUSABLE_REPLIES_KEY]``). Both end a turn.
    ``<prefix>unusable_replies`` sums the environment's counts; ``failed_turns`` counts the
    failed turns; ``failures`` and ``errors`` count at least one failed call per failed turn;
    ``failure_rate`` is failed turns over the turns that stepped the environment (what the
    guard's ``simulator_failure_spike`` rule watches).
    """
    turns = [turn for episode in episodes for turn in episode.turns]
    failed_turns = float(sum(1 for turn in turns if turn_failed(turn)))
    env_steps = float(sum(1 for turn in turns if turn.action is not None and not turn.invalid))
    unusable = float(sum(_count((turn.info or {}).get(UNUSABLE_REPLIES_KEY)) for turn in turns))
    failures = max(float(metrics.get(prefix + "failures", 0.0)), failed_turns)
    metrics[prefix + "unusable_replies"] = unusable
    metrics[prefix + "failed_turns"] = failed_turns
    metrics[prefix + "failures"] = failures
    metrics[prefix + "errors"] = failures
    metrics[prefix + "failure_rate"] = failed_turns / env_steps if env_steps else 0.0


def _count(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


VAL_SIMULATOR_PREFIX = "val-aux/simulator/"
"""Where a validation pass's simulator counters go (the trainer's and ``userrl eval``'s)."""


def validation_simulator_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """:func:`simulator_delta` of a validation pass, under :data:`VAL_SIMULATOR_PREFIX`."""
    return {VAL_SIMULATOR_PREFIX + key.removeprefix("simulator/"): value
            for key, value in simulator_delta(before, after).items()}


def simulator_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-step simulator metrics from the simulator's cumulative counters."""
    out = {f"simulator/{k}": float(after.get(k, 0.0)) - float(before.get(k, 0.0)) for k in after}
    calls = out.get("simulator/calls", 0.0)
    out["simulator/errors"] = out.get("simulator/failures", 0.0)
    out["simulator/failure_rate"] = out["simulator/errors"] / calls if calls else 0.0
    return out


def console_line(step: int, total: int, metrics: dict[str, float],
                 env_columns: list[tuple[str, str]] | tuple = ()) -> str:
    """The one-line step summary printed to the console; ``env_columns`` (label, metric key) are
    the environments' ``report_metrics``, shown after the score."""
    keys = [
        ("reward", "critic/rewards/mean"),
        ("score", "userrl/trajectory_score/mean"),
        *env_columns,
        ("turns", "rollout/turns/mean"),
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
