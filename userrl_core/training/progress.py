"""The console view of a run: a live phase line while a step runs, and one row per step.

Printed with rich to stderr, so stdout stays free for the final summary. ``logging.progress:
false`` (or a non-terminal) keeps only the per-step rows.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rich.console import Console
from rich.table import Table

from userrl_core.training.metrics import console_line

_COLUMNS = [
    ("score", "critic/score/mean", "{:.3f}"),
    ("reward", "critic/rewards/mean", "{:.3f}"),
    ("cover", "env/coverage/mean", "{:.2f}"),
    ("turns", "rollout/turns/mean", "{:.1f}"),
    ("resp", "response_length/mean", "{:.0f}"),
    ("invalid", "rollout/invalid_action_rate", "{:.2f}"),
    ("sim err", "simulator/errors", "{:.0f}"),
    ("loss", "actor/pg_loss", "{:.4f}"),
    ("entropy", "actor/entropy", "{:.3f}"),
    ("gnorm", "actor/grad_norm", "{:.3f}"),
    ("rollout s", "timing_s/rollout", "{:.1f}"),
    ("update s", "timing_s/update_actor", "{:.1f}"),
    ("step s", "perf/time_per_step", "{:.1f}"),
]


class ConsoleProgress:
    """Step rows and phase status for one run."""

    def __init__(self, total_steps: int, live: bool = True):
        self.console = Console(stderr=True, highlight=False)
        self.total = total_steps
        self.live = live and self.console.is_terminal
        self._header_done = False

    @contextlib.contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """A spinner with ``text`` while the phase runs (terminal only)."""
        if not self.live:
            yield
            return
        with self.console.status(text, spinner="dots"):
            yield

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if not self.console.is_terminal:
            self.console.print(console_line(step, self.total, metrics), soft_wrap=True)
            return
        table = Table(show_header=not self._header_done, box=None, pad_edge=False)
        table.add_column("step", justify="right")
        for label, _, _ in _COLUMNS:
            table.add_column(label, justify="right")
        row = [f"{step}/{self.total}"]
        for _, key, fmt in _COLUMNS:
            value = metrics.get(key)
            row.append("-" if value is None else fmt.format(value))
        table.add_row(*row)
        self.console.print(table)
        self._header_done = True
        for key, value in sorted(metrics.items()):
            if key.startswith("val-core/"):
                self.console.print(f"  [bold]{key}[/bold] = {value:.4f}")

    def message(self, text: str) -> None:
        self.console.print(text)


def quiet_third_party_output() -> None:
    """Hide download/loading progress bars of transformers and hub (not errors)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    with contextlib.suppress(Exception):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def print_summary(summary: dict, file=None) -> None:
    """The end-of-run lines on stdout: status, best and final validation, the run folder."""
    out = file or sys.stdout
    best = summary.get("best_val_reward")
    final = summary.get("final_val_reward")
    print(f"status: {summary.get('status')}  steps: {summary.get('steps')}/{summary.get('total_steps')}", file=out)
    if summary.get("error"):
        print(f"reason: {summary['error']}", file=out)
    if best is not None:
        print(f"best validation reward: {best:.4f} at step {summary.get('best_step')}", file=out)
    if final is not None:
        print(f"final validation reward: {final:.4f}", file=out)
    print(f"wall time: {summary.get('wall_time_s', 0):.1f}s", file=out)
    if summary.get("report"):
        print(f"report: {summary['report']}", file=out)
    print(f"run folder: {summary.get('run_dir')}", file=out)
