"""The training loop: rollout → credit assignment → update → validate → checkpoint → hooks.

One step takes ``data.train_batch_size`` tasks, samples ``rollout.n`` episodes of each with the
async rollout engine, leaves out episodes whose simulator failed (and by default their GRPO
group), turns turn rewards into per-token advantages with the recipe's turn-credit and
trajectory-score methods (UserRL's ``grpo_multiturn``), recomputes old log-probs with the
training model, and runs the PPO update. Validation, checkpoints and lifecycle hooks (the
stability guard among them) follow. Everything a person needs afterwards lands in the run
folder; ``report.md`` is written at the end whatever the outcome.

Resuming (``--resume``) restores weights, optimizer, scheduler, RNG streams and the data cursor
from the latest checkpoint, so the run continues with the same data order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from userrl_core import event_loop
from userrl_core.algorithms.advantages import grpo_multiturn_advantages
from userrl_core.config import RunConfig, apply_changes, check_plugin_names
from userrl_core.data import check_prompt_lengths, load_tasks
from userrl_core.errors import RunStopped, Terminated, UserError
from userrl_core.plugins import get_plugin_manager
from userrl_core.redaction import redact, redact_config
from userrl_core.registry import Kind
from userrl_core.run import RunHandle
from userrl_core.training import batching
from userrl_core.training.build import Components, build_components, report_metrics
from userrl_core.training.checkpoint import CheckpointManager
from userrl_core.training.data_metrics import trained_batch_metrics
from userrl_core.training.geometry import plan_geometry
from userrl_core.training.metrics import (
    VAL_SIMULATOR_PREFIX,
    RunRecorder,
    count_failed_turns,
    simulator_delta,
    validation_simulator_delta,
)
from userrl_core.training.progress import ConsoleProgress, quiet_third_party_output
from userrl_core.training.val_reward import validation_reward
from userrl_core.training.validation import run_validation
from userrl_core.types import Episode, EpisodeStatus, Task

log = logging.getLogger("userrl")

TRAINER_STATE = "trainer_state.pt"


class Trainer:
    """Runs one training run into one run folder."""

    def __init__(self, config: RunConfig, run_dir: Path, components: Components | None = None,
                 recipe_path: str | None = None):
        """``components`` defaults to :func:`build_components` once the data has sized the run."""
        self.config = config
        self.run_dir = run_dir
        plugins = components.plugins if components else get_plugin_manager()
        self.registry = plugins.registry
        check_plugin_names(config, self.registry)
        self.recipe_path = recipe_path
        self.turn_credit = self.registry.get(Kind.TURN_CREDIT, config.algorithm.turn_credit)
        self.trajectory_score = self.registry.get(Kind.TRAJECTORY_SCORE, config.algorithm.trajectory_score)
        data = config.data
        self.task_sets = {"train": load_tasks(data.train_files, self.registry, max_tasks=data.train_max_tasks,
                                              env_settings=config.env)}
        if data.val_files:
            self.task_sets["val"] = load_tasks(data.val_files, self.registry, max_tasks=data.val_max_tasks,
                                               env_settings=config.env)
        self.train_tasks = self.task_sets["train"].tasks
        self.val_tasks = self.task_sets["val"].tasks if "val" in self.task_sets else []
        geometry, _ = plan_geometry(config, len(self.train_tasks))
        if not geometry.steps_per_epoch:
            raise UserError(
                f"data.train_batch_size ({data.train_batch_size}) is larger than the {len(self.train_tasks)} "
                f"training tasks loaded from {', '.join(data.train_files)}"
            )
        self.steps_per_epoch, self.total_steps = geometry.steps_per_epoch, geometry.total_steps
        env_names = {t.env_name for t in [*self.train_tasks, *self.val_tasks]}
        self.c = components or build_components(config, plugins, total_steps=self.total_steps, env_names=env_names)
        check_prompt_lengths([*self.train_tasks, *self.val_tasks], self.c.engine.opening_length,
                             config.data.max_prompt_length)
        self.handle = RunHandle(config=config, run_dir=run_dir)
        self.checkpoints = CheckpointManager(run_dir, keep_last=config.trainer.max_ckpt_to_keep)
        self.recorder = RunRecorder(run_dir, config, wandb_enabled=config.logging.wandb.enabled,
                                    wandb_mode=config.logging.wandb.mode)
        self.step = 0
        self.completed_step = 0  # the last step whose metrics were logged (what the summary reports)
        self.steps_without_update = 0
        self._stop_after_step: str | None = None
        self.failed_turns = 0.0
        self.unusable_replies = 0.0
        self.unusable_reply_failures = 0.0
        self.epoch = 0
        self.batch_index = 0
        self.last_val: dict[str, float] = {}
        self.hook_errors: list[str] = []
        self.started = time.time()
        shown = report_metrics(self.registry, env_names)
        self.progress = ConsoleProgress(self.total_steps, live=config.logging.progress,
                                        env_columns=[(label, f"env/{metric}/mean") for metric, label in shown.items()])

    # ------------------------------------------------------------ geometry and data order

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.config.data.shuffle:
            return list(range(len(self.train_tasks)))
        g = torch.Generator().manual_seed(self.config.trainer.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_tasks), generator=g).tolist()

    def _batch(self, epoch: int, index: int) -> list[Task]:
        b = self.config.data.train_batch_size
        order = self._epoch_order(epoch)[index * b:(index + 1) * b]
        return [self.train_tasks[i] for i in order]

    # ------------------------------------------------------------ one step

    async def _train_step(self, tasks: list[Task]) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        sim_before = self.c.simulator_stats()
        with self.progress.phase("rollout") as reporter:
            result = await self.c.engine.run(tasks, cfg.rollout.n, seed=cfg.trainer.seed * 1_000_003 + self.step,
                                             progress=reporter)
        t_rollout = time.perf_counter() - t0
        metrics: dict[str, float] = dict(result.metrics)
        metrics.update(simulator_delta(sim_before, self.c.simulator_stats()))
        episodes = result.episodes
        self._count_failures(metrics, episodes)
        self.recorder.transcripts("step", self.step, episodes, cfg.logging.transcripts_per_step)

        selection = batching.select_for_training(episodes, cfg.algorithm.exclude_failed)
        metrics["simulator/excluded_episodes"] = float(selection.excluded_failed + selection.excluded_by_group)
        metrics["simulator/failed_episodes"] = float(sum(e.status is EpisodeStatus.FAILED for e in episodes))
        kept = selection.kept
        if not kept:
            self.steps_without_update += 1
            limit = cfg.trainer.max_steps_without_update
            log.warning("step %d: every episode was excluded (simulator failures or environment errors); no update "
                        "(%d in a row)", self.step, self.steps_without_update)
            metrics["actor/skipped_update"] = 1.0
            if self.steps_without_update >= limit:
                last = next((e.error for e in reversed(episodes) if e.error), "no error text recorded")
                self._stop_after_step = (
                    f"step {self.step}: no update in the last {self.steps_without_update} step(s) (limit "
                    f"trainer.max_steps_without_update={limit}): every episode failed in the simulator; last "
                    f"error: {last}"
                )
            return metrics
        self.steps_without_update = 0

        rewards, turn_mask = batching.turn_tensors(kept)
        gamma = cfg.algorithm.gamma
        credits = self.turn_credit(rewards, turn_mask, gamma=gamma)
        scores = self.trajectory_score(rewards, turn_mask, gamma=gamma)
        batch = batching.token_tensors(kept, pad_id=self._pad_id())
        token_turn = batching.token_turn_index(kept, batch.input_ids.shape[1])
        groups = torch.tensor([e.group for e in kept], dtype=torch.long)
        batch.group_ids = groups
        batch.advantages = grpo_multiturn_advantages(
            token_turn, credits, scores, groups, norm_by_std=cfg.algorithm.norm_adv_by_std_in_grpo
        ).to(torch.float32)
        metrics.update(trained_batch_metrics(kept, scores, batch.advantages, batch.loss_mask))

        t1 = time.perf_counter()
        with self.progress.phase("log-probs"):
            batch.old_logprobs = self.c.training.compute_logprobs(batch)
            if cfg.actor.use_kl_loss:
                batch.ref_logprobs = self.c.training.compute_logprobs(batch, reference=True)
        t2 = time.perf_counter()
        with self.progress.phase("update"):
            metrics.update(self.c.training.update(batch))
        self._check_finite_update(metrics)
        t3 = time.perf_counter()
        self.c.rollout.sync_weights(self.c.training)
        t4 = time.perf_counter()

        tokens = float(batch.attention_mask.sum())
        metrics.update({
            "timing_s/rollout": t_rollout,
            "timing_s/gen": t_rollout,  # verl's name for the generation phase, which includes the turns
            "timing_s/old_log_prob": t2 - t1,
            "timing_s/update_actor": t3 - t2,
            "timing_s/sync_weights": t4 - t3,
            "perf/total_num_tokens": tokens,
        })
        return metrics

    def _count_failures(self, metrics: dict[str, float], episodes: list[Episode],
                        prefix: str = "simulator/") -> None:
        """Every failed turn counts as a simulator failure (see ``count_failed_turns``); the run's
        totals for the summary are kept here."""
        transport = metrics.get(prefix + "failures", 0.0)
        count_failed_turns(metrics, episodes, prefix)
        self.unusable_reply_failures += metrics[prefix + "failures"] - transport
        self.failed_turns += metrics[prefix + "failed_turns"]
        self.unusable_replies += metrics[prefix + "unusable_replies"]

    def _check_finite_update(self, metrics: dict[str, float]) -> None:
        """A non-finite loss or gradient norm poisons the weights: stop before a checkpoint
        is written or the rollout engine gets them."""
        bad = sorted(k for k, v in metrics.items() if k.startswith("actor/") and isinstance(v, float)
                     and not math.isfinite(v))
        if bad:
            raise RunStopped(
                f"step {self.step}: the update produced non-finite values ({', '.join(bad)}); stopped before "
                f"writing a checkpoint (lower actor.lr or actor.grad_clip, or check the data)"
            )

    def _pad_id(self) -> int:
        tok = self.c.rollout.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    async def _validate(self) -> dict[str, float]:
        if not self.val_tasks:
            return {}
        t0 = time.perf_counter()
        n = self.config.rollout.val_n
        sim_before = self.c.simulator_stats()
        with self.progress.phase("validate") as reporter:
            episodes, metrics = await run_validation(self.c.engine, self.val_tasks, n, seed=self.config.trainer.seed,
                                                     batch_size=self.config.data.val_batch_size, progress=reporter)
        metrics.update(validation_simulator_delta(sim_before, self.c.simulator_stats()))
        self._count_failures(metrics, episodes, prefix=VAL_SIMULATOR_PREFIX)
        metrics["timing_s/validation"] = time.perf_counter() - t0
        self.recorder.transcripts("val_step", self.step, episodes, self.config.logging.transcripts_per_step)
        self.last_val = metrics
        score = validation_reward(metrics)
        if score is not None and (self.handle.best_score is None or score > self.handle.best_score):
            self.handle.best_score, self.handle.best_step = score, self.step
        self._hooks("on_validation_end", step=self.step, metrics=metrics)
        return metrics

    # ------------------------------------------------------------ checkpoints and resume

    def _write_checkpoint(self, folder: Path) -> None:
        self.c.training.save_hf(folder / "hf")
        self.c.training.save_state(folder)
        torch.save({
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
            "best_step": self.handle.best_step, "best_score": self.handle.best_score,
            "rollbacks": self.handle.rollbacks,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        }, folder / TRAINER_STATE)

    def _save(self, is_best: bool) -> None:
        t0 = time.perf_counter()
        meta = {"step": self.step, "val_score": validation_reward(self.last_val)}
        path = self.checkpoints.save(self.step, self._write_checkpoint, meta)
        self._hooks("on_checkpoint_saved", step=self.step, path=path, is_best=False)
        if is_best:
            best = self.checkpoints.save_best(self.step, self.handle.best_score, self._write_checkpoint)
            self._hooks("on_checkpoint_saved", step=self.step, path=best, is_best=True)
        log.info("checkpoint step %d saved in %.1fs%s", self.step, time.perf_counter() - t0, " (best)" if is_best else "")

    def _restore(self, folder: Path) -> None:
        self.c.training.load_hf(folder / "hf")
        self.c.training.load_state(folder)
        self.c.rollout.sync_weights(self.c.training)
        state = torch.load(folder / TRAINER_STATE, weights_only=False)
        self.step, self.epoch, self.batch_index = state["step"], state["epoch"], state["batch_index"]
        self.completed_step = self.step
        self.handle.best_step, self.handle.best_score = state["best_step"], state["best_score"]
        self.handle.rollbacks = state.get("rollbacks", 0)
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])

    def _rollback(self, changes: dict[str, Any]) -> None:
        best = self.checkpoints.best()
        if best is None:
            raise RunStopped("roll-back requested but no best checkpoint exists yet; stopping instead")
        step_now, rollbacks = self.step, self.handle.rollbacks
        self._restore(best)
        self.handle.rollbacks = rollbacks + 1
        self.config = apply_changes(self.config, changes)
        self.c.training.apply_config(self.config)
        self.handle.config = self.config
        log.warning("rolled back from step %d to best step %d with changes %s", step_now, self.step, changes)
        self.step = self.completed_step = step_now  # the step counter keeps counting: metrics stay monotonic

    # ------------------------------------------------------------ hooks

    def _hooks(self, name: str, **kwargs: Any) -> None:
        self.handle.step = self.step
        self.hook_errors += self.c.plugins.call_lifecycle(name, run=self.handle, **kwargs)
        self._write_decisions()

    def _write_decisions(self) -> None:
        with (self.run_dir / "decisions.jsonl").open("w", encoding="utf-8") as f:
            for decision in self.handle.decisions:
                f.write(redact(json.dumps(decision.as_dict(), default=str)) + "\n")

    def _act_on_pending(self) -> None:
        decision, self.handle.pending = self.handle.pending, None
        if decision is None:
            return
        if decision.action == "stop":
            raise RunStopped(f"step {decision.step}: {decision.rule}: {decision.message}")
        if decision.action == "rollback":
            self._rollback(decision.changes)

    # ------------------------------------------------------------ the run

    async def run(self, resume: bool) -> dict[str, Any]:
        cfg = self.config.trainer
        if resume:
            latest = self.checkpoints.latest()
            if latest is None:
                raise UserError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
            self._restore(latest)
            dropped = self.recorder.truncate_after(self.step)
            if dropped:
                log.warning("resume: %d metrics line(s) past checkpoint step %d moved to metrics.discarded.jsonl",
                            dropped, self.step)
            self.batch_index += 1
            if self.batch_index >= self.steps_per_epoch:
                self.epoch, self.batch_index = self.epoch + 1, 0
            log.info("resumed from %s at step %d", latest, self.step)
        else:
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
        self._hooks("on_run_start")
        if cfg.val_before_train and self.step == 0 and self.val_tasks:
            with self.progress.stage(f"step 0/{self.total_steps}"):
                val = await self._validate()
                self.recorder.log(0, 0, val)
                if self.handle.best_step == 0:  # the untrained model can be the one to roll back to
                    with self.progress.phase("checkpoint"):
                        best = self.checkpoints.save_best(0, self.handle.best_score, self._write_checkpoint)
            self.progress.step(0, val)
            if self.handle.best_step == 0:
                self._hooks("on_checkpoint_saved", step=0, path=best, is_best=True)
            self._act_on_pending()

        while self.step < self.total_steps:
            if self.batch_index >= self.steps_per_epoch:
                self.epoch, self.batch_index = self.epoch + 1, 0
            tasks = self._batch(self.epoch, self.batch_index)
            self.step += 1
            self.handle.step = self.step
            t0 = time.perf_counter()
            with self.progress.stage(f"step {self.step}/{self.total_steps}"):
                metrics = await self._train_step(tasks)
                last = self.step == self.total_steps
                if self._due(cfg.test_freq, last):
                    metrics.update(await self._validate())
                best_now = self.handle.best_step == self.step
                if self._due(cfg.save_freq, last) or best_now:
                    with self.progress.phase("checkpoint"):
                        self._save(is_best=best_now)
            elapsed = time.perf_counter() - t0
            metrics["perf/time_per_step"] = elapsed
            metrics["timing_s/step"] = elapsed
            metrics["training/global_step"] = float(self.step)
            metrics["perf/throughput"] = metrics.get("perf/total_num_tokens", 0.0) / max(elapsed, 1e-9)
            metrics["training/epoch"] = float(self.epoch)
            self.recorder.log(self.step, self.epoch, metrics)
            self.completed_step = self.step
            self.progress.step(self.step, metrics)
            self._hooks("on_step_end", step=self.step, metrics=metrics)
            self._act_on_pending()
            if self._stop_after_step:
                raise RunStopped(self._stop_after_step)
            self.batch_index += 1
        return self._summary("finished")

    def _due(self, freq: int, last: bool) -> bool:
        return last or (freq > 0 and self.step % freq == 0)

    def _summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        stats = dict(self.c.simulator_stats())
        # the simulator counts calls that raised; replies the environment could not use are
        # failures too (docs/simulators.md)
        stats["transport_failures"] = stats.get("failures", 0.0)
        stats["failures"] = stats["transport_failures"] + self.unusable_reply_failures
        stats["unusable_replies"] = self.unusable_replies
        stats["failed_turns"] = self.failed_turns
        return {
            "status": status,
            "error": error,
            "steps": self.completed_step,
            "total_steps": self.total_steps,
            "best_step": self.handle.best_step,
            "best_val_reward": self.handle.best_score,
            "final_val_reward": validation_reward(self.last_val),
            "wall_time_s": time.time() - self.started,
            "decisions": [d.as_dict() for d in self.handle.decisions],
            "rollbacks": self.handle.rollbacks,
            "hook_errors": self.hook_errors,
            "simulator": {"name": self.config.simulator.name, **stats},
            "tasks": {split: task_set.summary() for split, task_set in self.task_sets.items()},
            "run_dir": str(self.run_dir),
        }


def _run_dir(config: RunConfig, run_dir: str | None) -> Path:
    if run_dir or config.trainer.run_dir:
        return Path(run_dir or config.trainer.run_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config.trainer.default_local_dir) / f"{config.trainer.experiment_name}-{stamp}"


def _write_config(config: RunConfig, run_dir: Path) -> None:
    """The resolved config; it holds variable names for secrets, never their values."""
    with (run_dir / "config.yaml").open("w", encoding="utf-8") as f:
        yaml.safe_dump(redact_config(config.model_dump(mode="json")), f, sort_keys=False)


def run_training(config: RunConfig, *, recipe_path: str | None = None, resume: bool = False,
                 run_dir: str | None = None) -> dict[str, Any]:
    """Train into a run folder and return the summary (also written to ``summary.json``)."""
    folder = _run_dir(config, run_dir)
    if resume and not folder.exists():
        raise UserError(f"--resume: run folder not found: {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    _write_config(config, folder)
    quiet_third_party_output()
    with contextlib.ExitStack() as stack:
        if config.simulator_server.enabled:
            config = _start_simulator_server(config, folder, stack)
        return _train(config, folder, recipe_path, resume, stack)


def _start_simulator_server(config: RunConfig, folder: Path, stack: contextlib.ExitStack) -> RunConfig:
    """Start the recipe's simulator server (stopped when the run ends, however it ends) and
    route the simulator to it."""
    from userrl_core.training.simulator_server import ManagedSimulatorServer, routed_simulator_config

    server = ManagedSimulatorServer(config.simulator_server, log_path=folder / "simulator_server.log")
    stack.callback(server.stop)
    server.start()
    routed = routed_simulator_config(config.simulator, config.simulator_server)
    return config.model_copy(update={"simulator": routed})


def _train(config: RunConfig, folder: Path, recipe_path: str | None, resume: bool,
           stack: contextlib.ExitStack) -> dict[str, Any]:
    try:
        trainer = Trainer(config, folder, recipe_path=recipe_path)
    except BaseException as exc:  # data, plugins or backends failed while the run was being built
        _record_failed_build(config, folder, exc)
        raise
    stack.callback(trainer.c.close)
    status, error = "finished", None
    try:
        summary = event_loop.run(trainer.run(resume))
    except RunStopped as exc:
        status, error = "stopped", str(exc)
        log.warning("run stopped: %s", exc)
    except Terminated:
        status, error = "terminated", "terminated by SIGTERM"
        raise
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
        raise
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = trainer._summary(status, error)
        _finish(trainer, summary)
    return summary


def _record_failed_build(config: RunConfig, folder: Path, exc: BaseException) -> None:
    """A run that failed before its first step still leaves ``summary.json`` and ``report.md``
    saying why."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    summary = {
        "status": "interrupted" if interrupted else "failed",
        "error": "interrupted by the user (Ctrl-C)" if interrupted else f"{type(exc).__name__}: {exc}",
        "phase": "building the run (data, plugins, backends)",
        "steps": 0,
        "simulator": {"name": config.simulator.name},
        "run_dir": str(folder),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if config.trainer.report:
        try:
            from userrl_core.training.report import write_report

            write_report(folder)
        except Exception as report_exc:  # the run's own error is the one to show
            log.error("writing the report failed: %s: %s", type(report_exc).__name__, report_exc)


def _finish(trainer: Trainer, summary: dict[str, Any]) -> None:
    """Close everything and write the summary and the report, whatever happened."""
    try:
        trainer._hooks("on_run_end", status=summary["status"], summary=summary)
    finally:
        summary["decisions"] = [d.as_dict() for d in trainer.handle.decisions]
        (trainer.run_dir / "summary.json").write_text(redact(json.dumps(summary, indent=2, default=str)))
        try:
            if trainer.c.simulator is not None:
                asyncio.run(trainer.c.simulator.aclose())
        except Exception as exc:  # closing must not hide the run's own outcome
            log.warning("closing the simulator failed: %s", exc)
        if trainer.config.trainer.report:
            try:
                from userrl_core.training.report import write_report

                path = write_report(trainer.run_dir)
                summary["report"] = str(path)
            except Exception as exc:  # a report failure must not hide the run's own outcome
                log.error("writing the report failed: %s: %s", type(exc).__name__, exc)
        trainer.recorder.close(plots=sorted((trainer.run_dir / "plots").glob("*.png")))
