"""``userrl eval``: score a checkpoint on a task split, with the metric names of validation.

A run folder means its best checkpoint (``checkpoints/best``); a checkpoint folder (one with
``hf/``) or a bare Hugging Face model folder can be given too. The recipe is the run folder's
``config.yaml`` unless ``recipe`` names one. The simulator, backends and rollout engine are built
exactly as the trainer builds them (:func:`userrl_core.training.build.build_components`), with
``model.path`` pointed at the checkpoint, and each task runs ``n`` times at the validation
temperature. The result (``eval.json``) carries ``val-core/<data_source>/reward/mean@n`` and the
``val-aux`` metrics validation logs, the mean over data sources (the number the best checkpoint
is chosen by), the per-gym score table (:func:`per_source`, also written as ``scores.md``),
per-category means, the environments' ``report_metrics``, turns, simulator errors and cost; every episode goes
to ``transcripts/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from userrl_core import event_loop
from userrl_core.config import load_recipe, validate_config
from userrl_core.config.schema import RunConfig
from userrl_core.errors import UserError
from userrl_core.types import Episode, EpisodeStatus
from userrl_core.training.val_reward import validation_reward

log = logging.getLogger(__name__)



def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(HF model folder, run folder or None) for a run folder, a checkpoint folder or an HF folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint or run folder not found: {path}")
    if (path / "checkpoints").is_dir():
        best = path / "checkpoints" / "best" / "hf"
        if not best.is_dir():
            raise UserError(f"{path}: the run folder has no best checkpoint (checkpoints/best/hf)")
        return best, path
    if (path / "hf").is_dir():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return path / "hf", run_dir
    if (path / "config.json").is_file():
        return path, None
    raise UserError(f"{path} is neither a run folder (checkpoints/), a checkpoint folder (hf/) nor a model folder "
                    "(config.json)")


def eval_config(model_dir: Path, run_dir: Path | None, recipe: str | None, overrides: list[str],
                temperature: float | None) -> RunConfig:
    """The run's config (or the recipe's) with ``model.path`` set to the checkpoint."""
    if recipe is not None:
        config = load_recipe(recipe, overrides)
    else:
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            raise UserError(f"{model_dir}: no run folder config.yaml next to this checkpoint; pass --recipe")
        if overrides:
            raise UserError("overrides need --recipe (the run's config.yaml is used as it was resolved)")
        source = run_dir / "config.yaml"
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise UserError(f"{source}: cannot read: {' '.join(str(exc).split())}") from None
        config = validate_config(data if isinstance(data, dict) else {}, source=str(source))
    data = config.model_dump(mode="python")
    data["model"]["path"] = str(model_dir)
    if (model_dir / "tokenizer_config.json").is_file():
        data["model"]["tokenizer_path"] = None
    if temperature is not None:
        data["rollout"]["val_temperature"] = temperature
    data["logging"]["wandb"]["enabled"] = False
    return validate_config(data, source="eval config")


def category_of(episode: Episode) -> str:
    category = episode.task.payload.get("category") if isinstance(episode.task.payload, dict) else None
    return category if isinstance(category, str) and category else "(none)"


def per_category(episodes: list[Episode], shown: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """Mean score, turns and the ``shown`` environment metrics (the environments'
    ``report_metrics``) per task category (failed episodes counted, not averaged)."""
    groups: dict[str, list[Episode]] = {}
    for episode in episodes:
        groups.setdefault(category_of(episode), []).append(episode)
    out = {}
    for category, group in sorted(groups.items()):
        ok = [e for e in group if e.status is EpisodeStatus.OK]
        row: dict[str, float] = {"episodes": float(len(group)), "failed_episodes": float(len(group) - len(ok))}
        if ok:
            row["reward/mean"] = float(np.mean([e.metrics.get("score", 0.0) for e in ok]))
            row["turns/mean"] = float(np.mean([len(e.turns) for e in ok]))
            row.update(shown_means(ok, shown, suffix="/mean"))
        out[category] = row
    return out


def shown_means(ok: list[Episode], shown: Iterable[str], suffix: str = "") -> dict[str, float]:
    """Mean of each ``shown`` metric over the episodes that report it."""
    out = {}
    for metric in shown:
        values = [e.metrics[metric] for e in ok if metric in e.metrics]
        if values:
            out[f"{metric}{suffix}"] = float(np.mean(values))
    return out


def per_source(episodes: list[Episode]) -> dict[str, dict[str, Any]]:
    """UserRL's per-gym scores: an episode's score is the sum of its turn rewards
    (``eval/analyze.py``); a task's score is the mean over its samples, a data source's the mean
    over its tasks. Failed episodes (a simulator or search failure) have no score: they are
    counted, per data source, and left out of the mean (UserRL would count them as 0)."""
    groups: dict[str, list[Episode]] = {}
    for episode in episodes:
        groups.setdefault(episode.task.data_source, []).append(episode)
    out: dict[str, dict[str, Any]] = {}
    for source, group in sorted(groups.items()):
        ok = [e for e in group if e.status is not EpisodeStatus.FAILED]
        by_task: dict[int, list[float]] = {}
        for episode in ok:
            by_task.setdefault(episode.group, []).append(float(sum(episode.turn_rewards)))
        out[source] = {
            "env_name": ", ".join(sorted({e.task.env_name for e in group})),
            "tasks": len({e.group for e in group}),
            "episodes": len(group),
            "failed_episodes": len(group) - len(ok),
            "score": float(np.mean([np.mean(v) for v in by_task.values()])) if by_task else None,
            "turns": float(np.mean([len(e.turns) for e in ok])) if ok else None,
        }
    return out


def score_table(rows: dict[str, dict[str, Any]]) -> str:
    """The per-gym scores as a Markdown table (printed by ``userrl eval`` and written to scores.md)."""
    lines = ["| data source | environment | tasks | episodes | failed | score (mean of episode sums) | turns |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for source, row in rows.items():
        score = "n/a" if row["score"] is None else f"{row['score']:.4f}"
        turns = "n/a" if row["turns"] is None else f"{row['turns']:.2f}"
        lines.append(f"| {source} | {row['env_name']} | {row['tasks']} | {row['episodes']} | "
                     f"{row['failed_episodes']} | {score} | {turns} |")
    return "\n".join(lines)


def default_out_dir(model_dir: Path, run_dir: Path | None, split: str, n: int) -> Path:
    checkpoint = model_dir.parent if model_dir.name == "hf" else model_dir
    base = run_dir if run_dir is not None else checkpoint
    return base / "eval" / f"{checkpoint.name}_{Path(split).stem}_n{n}"


def evaluate(checkpoint_or_run: str | Path, recipe: str | None = None, split: str = "val", n: int = 4, *,
             overrides: list[str] | None = None, out_dir: str | Path | None = None,
             temperature: float | None = None, max_tasks: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on a split (``val``, ``train`` or a task file); write ``eval.json`` and
    transcripts into ``out_dir`` and return what ``eval.json`` holds."""
    from userrl_core.data import load_tasks
    from userrl_core.training.metrics import episode_record, simulator_delta, validation_simulator_delta
    from userrl_core.data import check_prompt_lengths
    from userrl_core.training.build import build_components, report_metrics
    from userrl_core.training.progress import ConsoleProgress
    from userrl_core.training.validation import run_validation

    if n < 1:
        raise UserError(f"--n must be at least 1; got {n}")
    model_dir, run_dir = resolve_checkpoint(checkpoint_or_run)
    config = eval_config(model_dir, run_dir, recipe, list(overrides or []), temperature)
    if split == "val":
        files, limit = config.data.val_files, config.data.val_max_tasks
        if not files:
            raise UserError("--split val: the recipe has no data.val_files")
    elif split == "train":
        files, limit = config.data.train_files, config.data.train_max_tasks
    elif Path(split).is_file():
        files, limit = [split], None
    else:
        raise UserError(f"--split {split!r}: expected 'val', 'train' or a task file")
    limit = max_tasks or limit
    if n > 1 and config.rollout.val_temperature == 0:
        log.warning("n=%d at temperature 0 (greedy): the samples of a task will mostly be identical; "
                    "pass --temperature to sample", n)

    started = time.perf_counter()
    from userrl_core.plugins import get_plugin_manager

    plugins = get_plugin_manager()
    task_set = load_tasks(files, plugins.registry, max_tasks=limit, env_settings=config.env)
    tasks = task_set.tasks
    components = build_components(config, plugins, env_names={t.env_name for t in tasks})
    shown = report_metrics(plugins.registry, {t.env_name for t in tasks})
    check_prompt_lengths(tasks, components.engine.opening_length, config.data.max_prompt_length)
    sim_before = components.simulator_stats()

    progress = ConsoleProgress(0, live=config.logging.progress)

    async def run_all():
        try:
            with progress.stage(f"eval {Path(split).name}"), progress.phase("validate") as reporter:
                return await run_validation(components.engine, tasks, n, seed=config.trainer.seed,
                                            batch_size=config.data.val_batch_size, progress=reporter)
        finally:
            if components.simulator is not None:
                await components.simulator.aclose()

    try:
        episodes, metrics = event_loop.run(run_all())
    finally:
        components.close()
    sim_after = components.simulator_stats()
    simulator = simulator_delta(sim_before, sim_after)
    metrics.update(validation_simulator_delta(sim_before, sim_after))

    out = Path(out_dir) if out_dir is not None else default_out_dir(model_dir, run_dir, split, n)
    (out / "transcripts").mkdir(parents=True, exist_ok=True)
    transcripts = out / "transcripts" / f"eval_{Path(split).stem}.jsonl"
    with transcripts.open("w", encoding="utf-8") as f:
        for episode in episodes:
            f.write(json.dumps(episode_record(0, episode), default=str) + "\n")
    ok = [e for e in episodes if e.status is EpisodeStatus.OK]
    result: dict[str, Any] = {
        "checkpoint": str(model_dir),
        "run_dir": None if run_dir is None else str(run_dir),
        "recipe": recipe,
        "split": split,
        "files": [str(f) for f in files],
        "n": n,
        "temperature": config.rollout.val_temperature,
        "tasks": len(tasks),
        "episodes": len(episodes),
        "failed_episodes": len(episodes) - len(ok),
        "reward": validation_reward(metrics),
        "metrics": metrics,
        "per_source": per_source(episodes),
        "skipped_rows": task_set.summary()["skipped"],
        "per_category": per_category(episodes, shown),
        "env_metrics": shown_means(ok, shown),
        "turns": float(np.mean([len(e.turns) for e in ok])) if ok else None,
        "simulator": {"name": config.simulator.name, "model": config.simulator.model,
                      **{k.removeprefix("simulator/"): v for k, v in simulator.items()}},
        "wall_time_s": time.perf_counter() - started,
        "transcripts": str(transcripts),
        "out_dir": str(out),
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    (out / "scores.md").write_text(score_table(result["per_source"]) + "\n", encoding="utf-8")
    return result
