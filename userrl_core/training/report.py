"""The automatic training report: ``report.md`` and ``plots/*.png`` from a run folder alone.

It reads only what the trainer leaves in the folder (``config.yaml``, ``metrics.jsonl``,
``decisions.jsonl``, ``transcripts/``, ``summary.json``, checkpoint headers), so it works for a
finished run, a stopped one, one that crashed half-way (no ``summary.json``, a torn last line in
``metrics.jsonl``) and one still running. What it could not read it says in the report.
``userrl report RUN_DIR`` writes it by hand; the trainer writes it at the end of every run.
docs/report.md describes each part.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from userrl_core.config.dotted import lookup
from userrl_core.errors import UserError
from userrl_core.redaction import redact
from userrl_core.training.val_reward import validation_reward

TRAIN_REWARD_KEYS = ("critic/rewards/mean", "critic/score/mean")
MAX_TURN_CHARS = 2000
EPISODES_PER_TRANSCRIPT = 2
COLLAPSE_FRACTION = 0.5  # a validation below this fraction of the best, after the best, marks a collapse
ACTION_COLOURS = {"warn": "tab:orange", "stop": "tab:red", "rollback": "tab:purple"}


# --------------------------------------------------------------------------------------------
# Reading the run folder
# --------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything the report uses, as read from the run folder, with what could not be read."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and finite values of one metric (the last line wins when a step repeats)."""
        by_step: dict[int, float] = {}
        for line in self.metrics:
            value = line.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                by_step[int(line["step"])] = float(value)
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def first_series(self, keys: Iterable[str]) -> tuple[str, list[int], list[float]]:
        for key in keys:
            steps, values = self.series(key)
            if steps:
                return key, steps, values
        return "", [], []

    def validations(self) -> list[tuple[int, float]]:
        """(step, validation reward) per validating line, the mean over data sources."""
        out: dict[int, float] = {}
        for line in self.metrics:
            score = validation_reward(line)
            if score is not None:
                out[int(line["step"])] = score
        return sorted(out.items())

    def value_at(self, key: str, step: int) -> float | None:
        steps, values = self.series(key)
        return values[steps.index(step)] if step in steps else None


def _read_jsonl(path: Path, problems: list[str], need_step: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return rows
    bad: list[int] = []
    for number, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if not isinstance(row, dict) or (need_step and not isinstance(row.get("step"), int)):
            bad.append(number)
            continue
        rows.append(row)
    if bad:
        problems.append(f"{path.name}: {len(bad)} unreadable line(s) left out (line {', '.join(map(str, bad[:5]))})")
    return rows


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder. Raises UserError only when the folder is not a run folder at all."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    if not any((run_dir / name).exists() for name in ("config.yaml", "metrics.jsonl", "summary.json")):
        raise UserError(f"{run_dir} is not a run folder: it has no config.yaml, metrics.jsonl or summary.json")
    data = RunData(run_dir=run_dir)
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
            data.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as exc:
            data.problems.append(f"config.yaml cannot be read: {' '.join(str(exc).split())}")
    else:
        data.problems.append("config.yaml is missing")
    data.metrics = _read_jsonl(run_dir / "metrics.jsonl", data.problems, need_step=True)
    if (run_dir / "decisions.jsonl").is_file():
        data.decisions = _read_jsonl(run_dir / "decisions.jsonl", data.problems, need_step=True)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            data.summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data.problems.append("summary.json cannot be read")
    if not data.decisions and data.summary and isinstance(data.summary.get("decisions"), list):
        data.decisions = [d for d in data.summary["decisions"] if isinstance(d, dict)]
    return data


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _figure(rows: int, height: float = 3.2):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    fig = Figure(figsize=(9, height * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_decisions(ax, decisions: list[dict[str, Any]], label: bool) -> None:
    seen: set[str] = set()
    for decision in decisions:
        action = str(decision.get("action", "warn"))
        name = f"guard {action}" if label and action not in seen else None
        seen.add(action)
        ax.axvline(decision["step"], color=ACTION_COLOURS.get(action, "grey"), linestyle="--", linewidth=1.2,
                   alpha=0.8, label=name)
        if label:
            ax.annotate(str(decision.get("rule", "")), (decision["step"], 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color=ACTION_COLOURS.get(action, "grey"))


def _decorate(ax, decisions: list[dict[str, Any]], title: str, *, ylabel: str | None = None,
              label_decisions: bool = False) -> None:
    """What every step plot shares: guard decisions as vertical lines, title, integer step axis, grid."""
    _mark_decisions(ax, decisions, label=label_decisions)
    ax.set_title(title)
    _step_axis(ax)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _line(ax, data: RunData, key: str, title: str, decisions: list[dict[str, Any]]) -> None:
    steps, values = data.series(key)
    if steps:
        ax.plot(steps, values, marker="." if len(steps) < 60 else None, linewidth=1.4)
    else:
        ax.text(0.5, 0.5, f"{key}: not recorded in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
    _decorate(ax, decisions, title)


def plot_rewards(data: RunData, path: Path) -> Path:
    fig, (ax,) = _figure(1, height=4.5)
    key, steps, values = data.first_series(TRAIN_REWARD_KEYS)
    if steps:
        ax.plot(steps, values, label=f"train ({key})", linewidth=1.2, alpha=0.8,
                marker="." if len(steps) < 60 else None)
    validations = data.validations()
    if validations:
        ax.plot([s for s, _ in validations], [v for _, v in validations], marker="o", label="validation", linewidth=1.8)
        best_step, best = max(validations, key=lambda p: p[1])
        ax.scatter([best_step], [best], marker="*", s=260, color="gold", edgecolor="black", zorder=5,
                   label=f"best: {best:.3f} at step {best_step}")
    if not steps and not validations:
        ax.text(0.5, 0.5, "no reward recorded in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
    _decorate(ax, data.decisions, "Reward per step (validation: mean over data sources of val-core/*/reward/mean@n)",
              ylabel="reward", label_decisions=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.savefig(path)
    return path


_VAL_SOURCE = re.compile(r"^val-core/(?P<source>.+)/reward/mean@(?P<n>\d+)$")
_VAL_FAILED = re.compile(r"^val-aux/(?P<source>.+)/failed_episodes$")


def validation_by_source(data: RunData) -> dict[str, tuple[list[int], list[float]]]:
    """Validation reward per data source (``val-core/<source>/reward/mean@n``), by step: one
    curve per gym of a mixed run. A source whose episodes all failed at a step has no reward
    there (see :func:`validation_failures`)."""
    keys = sorted({key for line in data.metrics for key in line if _VAL_SOURCE.match(key)})
    out: dict[str, tuple[list[int], list[float]]] = {}
    for key in keys:
        steps, values = data.series(key)
        if steps:
            out[_VAL_SOURCE.match(key)["source"]] = (steps, values)
    return out


def validation_failures(data: RunData) -> dict[str, tuple[list[int], list[float], list[bool]]]:
    """Per validated data source (every source the validation ran, whether or not any of its
    episodes succeeded), by validation step: the share of its episodes that failed
    (``val-aux/<source>/failed_episodes`` over ``val-aux/<source>/episodes``; the count itself
    for a run that did not record the episodes) and whether all of them failed (no reward)."""
    sources = sorted({m["source"] for line in data.metrics for key in line if (m := _VAL_FAILED.match(key))}
                     - {"simulator"})
    rewards = validation_by_source(data)
    out: dict[str, tuple[list[int], list[float], list[bool]]] = {}
    for source in sources:
        steps, failed = data.series(f"val-aux/{source}/failed_episodes")
        rated, totals = data.series(f"val-aux/{source}/episodes")
        total_at = dict(zip(rated, totals))
        rewarded = set(rewards.get(source, ([], []))[0])
        shares = [f / total_at[s] if total_at.get(s) else f for s, f in zip(steps, failed)]
        out[source] = (steps, shares, [s not in rewarded for s in steps])
    return out


def plot_validation_by_source(data: RunData, path: Path) -> Path:
    """Top: reward per data source; a source whose episodes all failed at some validation has
    no point there (no reward exists; none is made up) and says so in the legend. Bottom: each
    source's failed share, an x where all of its episodes failed."""
    fig, (ax, below) = _figure(2, height=3.4)
    curves = validation_by_source(data)
    failures = validation_failures(data)
    for index, source in enumerate(sorted(set(curves) | set(failures))):
        colour = f"C{index % 10}"
        steps, values = curves.get(source, ([], []))
        failed_steps, shares, all_failed = failures.get(source, ([], [], []))
        lost = [s for s, gone in zip(failed_steps, all_failed) if gone]
        where = f"step {', '.join(map(str, lost))}" if len(lost) <= 4 else f"{len(lost)} validations"
        label = source + (f" (no reward at {where}: all episodes failed)" if lost else "")
        ax.plot(steps, values, marker="o", linewidth=1.4, color=colour, label=label)
        if failed_steps:
            below.plot(failed_steps, shares, marker="o", linewidth=1.4, color=colour, label=source)
            if lost:
                below.scatter(lost, [shares[failed_steps.index(s)] for s in lost], marker="x", s=90, color=colour,
                              zorder=4, label=f"{source}: all failed")
    if curves or failures:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation recorded in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
    if failures:
        below.legend(loc="best", fontsize=8)
    else:
        below.text(0.5, 0.5, "no failed-episode counts (val-aux/<data_source>/failed_episodes) in metrics.jsonl",
                   ha="center", va="center", transform=below.transAxes)
    _decorate(ax, data.decisions, "Validation reward per data source (val-core/<data_source>/reward/mean@n)",
              ylabel="reward")
    _decorate(below, data.decisions, "Failed validation episodes per data source (x: all failed)",
              ylabel="failed share")
    fig.savefig(path)
    return path


def plot_response_length(data: RunData, path: Path) -> Path:
    fig, (ax,) = _figure(1)
    plotted = False
    for key in ("response_length/mean", "response_length/max", "rollout/policy_tokens/mean", "prompt_length/mean"):
        steps, values = data.series(key)
        if steps:
            ax.plot(steps, values, label=key, linewidth=1.4)
            plotted = True
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "response_length/mean: not recorded", ha="center", va="center", transform=ax.transAxes)
    _decorate(ax, data.decisions, "Tokens per episode (response: all after the opening; policy tokens: sampled)")
    fig.savefig(path)
    return path


def plot_actor(data: RunData, path: Path) -> Path:
    fig, axes = _figure(3, height=2.6)
    for ax, (key, title) in zip(axes, [("actor/entropy", "Entropy (actor/entropy)"),
                                       ("actor/pg_loss", "Policy-gradient loss (actor/pg_loss)"),
                                       ("actor/grad_norm", "Gradient norm before clipping (actor/grad_norm)")]):
        _line(ax, data, key, title, data.decisions)
    fig.savefig(path)
    return path


def plot_throughput(data: RunData, path: Path) -> Path:
    fig, axes = _figure(2, height=2.6)
    _line(axes[0], data, "perf/throughput", "Throughput (tokens/s, perf/throughput)", [])
    _line(axes[1], data, "perf/time_per_step", "Time per step (s, perf/time_per_step)", [])
    fig.savefig(path)
    return path


def plot_simulator(data: RunData, path: Path) -> Path:
    fig, axes = _figure(2, height=2.6)
    _line(axes[0], data, "simulator/errors", "Failed simulator calls per step (simulator/errors)", data.decisions)
    ax = axes[1]
    steps, values = data.series("simulator/cost_usd")
    if steps:
        total, cumulative = 0.0, []
        for value in values:
            total += value
            cumulative.append(total)
        ax.plot(steps, cumulative, linewidth=1.4)
    else:
        ax.text(0.5, 0.5, "simulator/cost_usd: not recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Simulator cost so far (USD, sum of simulator/cost_usd)")
    _step_axis(ax)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


PLOTS = (
    ("reward.png", plot_rewards, "Train and validation reward, best point and guard decisions"),
    ("validation_by_source.png", plot_validation_by_source, "Validation reward per data source"),
    ("response_length.png", plot_response_length, "Response length"),
    ("actor.png", plot_actor, "Entropy, pg_loss and grad_norm"),
    ("throughput.png", plot_throughput, "Throughput and time per step"),
    ("simulator.png", plot_simulator, "Simulator errors and cost"),
)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _get(config: dict[str, Any], key: str, default: Any = None) -> Any:
    return lookup(config, key, default)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def count_checkpoint_parameters(run_dir: Path) -> int | None:
    """Parameters in the best (else latest) checkpoint, from the safetensors headers only."""
    folders = [run_dir / "checkpoints" / "best" / "hf"]
    folders += sorted((run_dir / "checkpoints").glob("step_*/hf"), reverse=True)
    for folder in folders:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            continue
        total = 0
        try:
            for file in files:
                with file.open("rb") as f:
                    (size,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(size))
                for name, entry in header.items():
                    if name != "__metadata__":
                        total += math.prod(entry["shape"])
        except (OSError, ValueError, KeyError, struct.error):
            continue
        return total
    return None


def _parameters_trained(data: RunData) -> str:
    count = count_checkpoint_parameters(data.run_dir)
    if count is None:
        return "not recorded (no checkpoint to count)"
    return f"{count:,} (all weights in the checkpoint: full-parameter training)"


def configuration_rows(data: RunData) -> list[list[Any]]:
    c = data.config
    g = lambda key: _get(c, key)  # noqa: E731
    offloads = [name for name in ("param_offload", "optimizer_offload", "activation_offload") if g(f"actor.{name}")]
    kl = f"on, coef {g('actor.kl_loss_coef')} ({g('actor.kl_loss_type')})" if g("actor.use_kl_loss") else "off"
    simulator = g("simulator.name")
    if g("simulator.model"):
        simulator = f"{simulator} ({g('simulator.model')})"
    gpus = g("trainer.n_gpus_per_node")
    return [
        ["model", g("model.path")],
        ["parameters trained", _parameters_trained(data)],
        ["algorithm", f"{g('algorithm.adv_estimator')}: turn credit {g('algorithm.turn_credit')}, "
                      f"trajectory score {g('algorithm.trajectory_score')}, gamma {g('algorithm.gamma')}"],
        ["tasks per step × rollout n", f"{g('data.train_batch_size')} × {g('rollout.n')}"],
        ["max turns / new tokens per turn", f"{g('rollout.max_turns')} / {g('rollout.max_new_tokens')}"],
        ["learning rate", f"{g('actor.lr')} ({g('actor.lr_scheduler')})"],
        ["KL loss", kl],
        ["entropy coefficient", g("actor.entropy_coeff")],
        ["backends (training / rollout)", f"{g('actor.backend')} / {g('rollout.backend')}"],
        # runs made before rollout.mode existed ran turn by turn
        ["rollout mode", g("rollout.mode") or "sync"],
        ["devices", f"{gpus} GPU(s) × {g('trainer.nnodes')} node(s)" if gpus else f"CPU ({g('trainer.device')})"],
        ["offloads", ", ".join(offloads) or "none"],
        ["simulator", simulator],
        ["validation", f"every {g('trainer.test_freq')} steps, n = {g('rollout.val_n')}"],
        ["stability guard", (f"on, at most {g('guard.max_rollbacks')} roll-back(s)" if g("guard.enabled")
                             else "off")],
    ]


def key_nodes(data: RunData) -> list[tuple[int, str]]:
    """(step, what) for the first validation, the best, each collapse onset, and the final step."""
    nodes: list[tuple[int, str]] = []
    validations = data.validations()
    if validations:
        nodes.append((validations[0][0], "first validation"))
        best_step, best = max(validations, key=lambda p: p[1])
        nodes.append((best_step, "best validation"))
        if best > 0:
            after = [(s, v) for s, v in validations if s > best_step and v < COLLAPSE_FRACTION * best]
            if after:
                nodes.append((after[0][0], f"validation below {COLLAPSE_FRACTION:g} × best (collapse onset)"))
    seen_rules: set[str] = set()
    for decision in data.decisions:
        rule = str(decision.get("rule"))
        if rule not in seen_rules:
            seen_rules.add(rule)
            nodes.append((int(decision["step"]), f"guard: {rule} ({decision.get('action')}) first fired"))
    if data.metrics:
        nodes.append((max(int(line["step"]) for line in data.metrics), "final step"))
    merged: dict[int, list[str]] = {}
    for step, what in sorted(nodes, key=lambda node: node[0]):  # stable: the order above within a step
        merged.setdefault(step, []).append(what)
    return [(step, "; ".join(whats)) for step, whats in merged.items()]


def _node_rows(data: RunData) -> list[list[Any]]:
    _, reward_steps, reward_values = data.first_series(TRAIN_REWARD_KEYS)
    train = dict(zip(reward_steps, reward_values))
    validations = dict(data.validations())
    return [
        [step, what, validations.get(step), train.get(step), data.value_at("actor/entropy", step),
         data.value_at("response_length/mean", step)]
        for step, what in key_nodes(data)
    ]


# --------------------------------------------------------------------------------------------
# Transcripts
# --------------------------------------------------------------------------------------------


def _transcript_files(run_dir: Path) -> list[tuple[int, bool, Path]]:
    """(step, is_validation, path) for every transcript file."""
    out = []
    for path in (run_dir / "transcripts").glob("*.jsonl"):
        stem = path.stem
        is_val = stem.startswith("val_")
        tail = stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            out.append((int(tail), is_val, path))
    return sorted(out)


def pick_transcripts(run_dir: Path, best_step: int | None) -> list[tuple[str, Path]]:
    """The transcript file at (or nearest before) the best step and the last one; validation first."""
    files = _transcript_files(run_dir)
    if not files:
        return []
    ranked = sorted(files, key=lambda f: (f[0], f[1]))  # at one step, the validation file comes last
    chosen: list[tuple[str, Path]] = []
    if best_step is not None:
        before = [f for f in ranked if f[0] <= best_step] or ranked
        at = [f for f in before if f[0] == before[-1][0]]
        pick = at[-1]
        chosen.append((f"at the best step ({best_step}): {pick[2].name}", pick[2]))
    last = ranked[-1]
    if not chosen or chosen[0][1] != last[2]:
        chosen.append((f"at the end (step {last[0]}): {last[2].name}", last[2]))
    return chosen


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    if len(text) > MAX_TURN_CHARS:
        return text[:MAX_TURN_CHARS] + f"\n[... {len(text) - MAX_TURN_CHARS} more characters not shown]"
    return text


def _quote(text: str) -> list[str]:
    return ["> " + line if line else ">" for line in text.splitlines()] or [">"]


def render_episode(episode: dict[str, Any]) -> list[str]:
    score = episode.get("score")
    lines = [f"#### Task `{episode.get('task_id')}` (group {episode.get('group')}, sample {episode.get('sample')}): "
             f"score {_fmt(score)}, ended by {episode.get('end_reason') or '–'}, status {episode.get('status')}"]
    if episode.get("error"):
        lines.append(f"Error: `{episode['error']}`")
    messages = episode.get("messages") or []
    opening = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    if opening:
        lines += ["", "**Task as the user first put it:**", *_quote(_clip(opening))]
    turns = episode.get("turns") or []
    rewards = [t.get("reward") for t in turns]
    lines += ["", f"Per-turn rewards: {', '.join(_fmt(r) for r in rewards) or 'no turns'}"]
    for number, turn in enumerate(turns, start=1):
        info = turn.get("info") or {}
        flags = [name for name in ("invalid", "no_action") if turn.get(name)]
        lines += ["", f"**Turn {number}**: reward {_fmt(turn.get('reward'))}" + (f" ({', '.join(flags)})" if flags else "")]
        lines += ["", "Agent:", *_quote(_clip(turn.get("text")))]
        action = turn.get("action")
        if isinstance(action, dict):
            lines += ["", f"Action: `{action.get('choice')}`: {_clip(action.get('content'))}".replace("\n", " ")]
        if turn.get("observation"):
            lines += ["", "User:", *_quote(_clip(turn.get("observation")))]
        notes = info.get("notes")
        for note in notes if isinstance(notes, list) else ():
            lines += ["", str(note)]
    return lines


def transcript_section(run_dir: Path, best_step: int | None) -> list[str]:
    lines: list[str] = []
    picks = pick_transcripts(run_dir, best_step)
    if not picks:
        return ["No transcripts were saved (logging.transcripts_per_step is 0, or the run ended before its first step)."]
    for title, path in picks:
        problems: list[str] = []
        episodes = _read_jsonl(path, problems, need_step=False)
        lines += [f"### Episodes {title}", ""]
        lines += [f"_{p}_" for p in problems]
        if not episodes:
            lines += ["(no readable episode in this file)", ""]
            continue
        scored = sorted(episodes, key=lambda e: (e.get("score") is None, -(e.get("score") or 0.0)))
        shown = [scored[0]] + ([scored[-1]] if len(scored) > 1 else [])  # the best and the worst of the file
        lines.append(f"{len(shown)} of {len(episodes)} episodes in the file: the highest and the lowest score.")
        for episode in shown[:EPISODES_PER_TRANSCRIPT]:
            lines += ["", *render_episode(episode)]
        lines.append("")
    return lines


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _status_line(data: RunData) -> str:
    if data.summary is None:
        return ("**Status: unknown**: there is no summary.json, so the run crashed before it could write one or is "
                "still running. Everything below comes from the files it wrote along the way.")
    status = data.summary.get("status", "unknown")
    text = f"**Status: {status}**"
    if data.summary.get("error"):
        text += f": {data.summary['error']}"
    return text


def _summary_rows(data: RunData) -> list[list[Any]]:
    s = data.summary or {}
    validations = data.validations()
    best = max(validations, key=lambda p: p[1]) if validations else (s.get("best_step"), s.get("best_val_reward"))
    steps = max((int(line["step"]) for line in data.metrics), default=s.get("steps"))
    rows = [
        ["steps done", steps if s.get("steps") is None else s.get("steps")],
        ["planned steps", s.get("total_steps") or _get(data.config, "trainer.total_training_steps")],
        ["best validation reward", f"{_fmt(best[1])} at step {_fmt(best[0])}"],
        ["final validation reward", validations[-1][1] if validations else s.get("final_val_reward")],
        ["roll-backs", s.get("rollbacks", sum(1 for d in data.decisions if d.get("action") == "rollback"))],
        ["wall time", f"{s['wall_time_s'] / 60:.1f} min" if isinstance(s.get("wall_time_s"), (int, float)) else None],
    ]
    simulator = s.get("simulator") if isinstance(s.get("simulator"), dict) else {}
    for key in ("name", "calls", "failures", "retries", "prompt_tokens", "completion_tokens", "cost_usd"):
        if key in simulator:
            rows.append([f"simulator {key}", simulator[key]])
    if not simulator:
        for key in ("simulator/calls", "simulator/errors", "simulator/cost_usd"):
            _, values = data.series(key)
            if values:
                rows.append([f"{key} (sum over steps)", sum(values)])
    return rows


def source_rows(data: RunData) -> list[list[Any]]:
    """Per validated data source: first and last validation reward (with their steps; "all
    failed" where every episode failed), best, and failed episodes at the last validation."""
    curves = validation_by_source(data)
    rows = []
    for source, (steps, _, _) in validation_failures(data).items():
        rewards = dict(zip(*curves.get(source, ([], []))))

        def at(step: int) -> str:
            return f"{_fmt(rewards[step]) if step in rewards else 'all failed'} (step {step})"

        failed = data.value_at(f"val-aux/{source}/failed_episodes", steps[-1])
        total = data.value_at(f"val-aux/{source}/episodes", steps[-1])
        rows.append([source, at(steps[0]), at(steps[-1]), _fmt(max(rewards.values())) if rewards else "all failed",
                     _fmt(failed) + (f" of {_fmt(total)}" if total is not None else "")])
    return rows


def task_rows(data: RunData) -> list[list[Any]]:
    """Tasks loaded and rows skipped per split and environment (summary.json's ``tasks``)."""
    tasks = (data.summary or {}).get("tasks")
    rows: list[list[Any]] = []
    if not isinstance(tasks, dict):
        return rows
    for split, entry in tasks.items():
        if not isinstance(entry, dict):
            continue
        loaded, skipped = entry.get("loaded") or {}, entry.get("skipped") or {}
        for env in sorted(set(loaded) | set(skipped)):
            rows.append([split, env, loaded.get(env, 0), skipped.get(env, 0)])
    return rows


def render_markdown(data: RunData, plots: list[tuple[str, str]]) -> str:
    validations = data.validations()
    best_step = max(validations, key=lambda p: p[1])[0] if validations else (data.summary or {}).get("best_step")
    lines = [f"# Training report: {data.run_dir.name}", "", _status_line(data), ""]
    if best_step is not None:
        best = dict(validations).get(best_step, (data.summary or {}).get("best_val_reward"))
        kept = data.run_dir / "checkpoints" / "best"
        where = " (checkpoints/best/)" if kept.is_dir() else ""
        lines += [f"Best validation reward **{_fmt(best)} at step {best_step}**{where}.", ""]
    if data.problems:
        lines += ["Could not read everything: " + "; ".join(data.problems) + ".", ""]
    lines += ["## Summary", "", *_table(["", ""], _summary_rows(data)), ""]
    tasks = task_rows(data)
    if tasks:
        lines += ["## Tasks", "", "Rows whose environment is not installed are skipped and counted, never run.", "",
                  *_table(["split", "environment", "tasks loaded", "rows skipped"], tasks), ""]
    sources = source_rows(data)
    if sources:
        lines += ["## Validation per data source", "",
                  *_table(["data source", "first", "last", "best", "failed episodes (last)"], sources), ""]
    lines += ["## Configuration", "", *_table(["setting", "value"], configuration_rows(data)), ""]
    lines += ["## Key steps", "",
              *_table(["step", "what", "validation reward", "train reward", "entropy", "response length"],
                      _node_rows(data)), ""]
    lines += ["## Stability guard decisions", ""]
    if data.decisions:
        lines += _table(["step", "rule", "action", "what it saw"],
                        [[d.get("step"), d.get("rule"), d.get("action"), d.get("message")] for d in data.decisions])
        changes = [d for d in data.decisions if d.get("changes")]
        for d in changes:
            lines.append(f"\nStep {d['step']} roll-back continued with: "
                         + ", ".join(f"`{k}` = `{v}`" for k, v in d["changes"].items()))
    else:
        lines.append("None: no rule fired.")
    lines += ["", "## Curves", ""]
    for name, caption in plots:
        lines += [f"### {caption}", "", f"![{caption}](plots/{name})", ""]
    lines += ["## Episodes", "", *transcript_section(data.run_dir, best_step), ""]
    lines += ["## Files in this run folder", "",
              "- `metrics.jsonl`: every metric of every step (validation metrics on the steps that validated)",
              "- `decisions.jsonl`: the stability guard's decisions",
              "- `transcripts/`: saved episodes per step (`val_step_*` for validation)",
              "- `checkpoints/best/`: the best checkpoint (`hf/` loads with transformers)",
              "- `summary.json`, `config.yaml`, `plots/`", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into the run folder and return the report's path."""
    data = load_run(run_dir)
    plot_dir = data.run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots = []
    for name, draw, caption in PLOTS:
        draw(data, plot_dir / name)
        plots.append((name, caption))
    path = data.run_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(redact(render_markdown(data, plots)), encoding="utf-8")
    tmp.replace(path)
    return path
