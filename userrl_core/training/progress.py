"""The console view of a run: a live display while a step runs, and one row per step.

While a step runs, one line says where it is: the phase (the rollout's ``generate`` and
``environment``, then ``log-probs``, ``update``, ``validate``, ``checkpoint``), episodes finished
out of the total (and how many failed), the furthest turn reached, and simulator calls in
flight and failed. The rollout engine reports those through
:class:`~userrl_core.rollout.progress.RolloutProgress`; this module only draws them. In a
terminal the line is a rich live display that disappears when the step ends, leaving the step's
row; when stderr is not a terminal it becomes plain lines (one when a phase starts, one when a
rollout ends, and one every ``plain_interval_s`` while a rollout runs long). ``logging.progress:
false`` keeps only the rows.

Printed to stderr, so stdout stays free for the final summary.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import IO, Iterator

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from userrl_core.rollout.progress import ProgressTally, RolloutProgress
from userrl_core.training.metrics import console_line

_COLUMNS = [
    ("reward", "critic/rewards/mean", "{:.3f}"),
    ("score", "userrl/trajectory_score/mean", "{:.3f}"),
    ("turns", "rollout/turns/mean", "{:.1f}"),
    ("resp", "response_length/mean", "{:.0f}"),
    ("sampled", "rollout/policy_tokens/mean", "{:.0f}"),
    ("invalid", "rollout/invalid_action_rate", "{:.2f}"),
    ("sim err", "simulator/errors", "{:.0f}"),
    ("loss", "actor/pg_loss", "{:.4f}"),
    ("entropy", "actor/entropy", "{:.3f}"),
    ("gnorm", "actor/grad_norm", "{:.3f}"),
    ("rollout s", "timing_s/rollout", "{:.1f}"),
    ("update s", "timing_s/update_actor", "{:.1f}"),
    ("step s", "perf/time_per_step", "{:.1f}"),
]

ROLLOUT_PHASES = ("rollout", "validate")
"""The trainer's phases that run the rollout engine (their line shows episodes, turn, calls)."""


class _DisplayTally(ProgressTally):
    """The tally the engine reports to; every change asks the console to redraw."""

    def __init__(self, owner: "ConsoleProgress") -> None:
        self._owner = owner
        super().__init__()

    def changed(self) -> None:
        self._owner._changed()


class ConsoleProgress:
    """Step rows, and the live (or plain) progress line while a step runs."""

    def __init__(self, total_steps: int, live: bool = True, *, console: Console | None = None,
                 plain_interval_s: float = 30.0, env_columns: list[tuple[str, str]] | None = None):
        """``live``: ``logging.progress``. ``console`` defaults to rich's on stderr.
        ``env_columns``: (label, metric key) of the environments' ``report_metrics``, shown
        after the score."""
        self.console = console or Console(stderr=True, highlight=False)
        self.env_columns = list(env_columns or [])
        self.columns = _COLUMNS[:2] + [(label, key, "{:.2f}") for label, key in self.env_columns] + _COLUMNS[2:]
        self.total = total_steps
        terminal = self.console.is_terminal
        self.live = live and terminal
        self.plain = live and not terminal
        self.plain_interval_s = plain_interval_s
        self.tally = _DisplayTally(self)
        self._display: Live | None = None
        self._spinner = Spinner("dots")
        self._label = ""
        self._phase = ""
        self._stage_started = self._phase_started = time.monotonic()
        self._last_plain = 0.0
        self._shown_rollout_phase = ""
        self._header_done = False

    # ------------------------------------------------------------ while a step runs

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        """Everything of one step (or the validation before training) under ``label``; in a
        terminal the live line shows for its duration and is gone afterwards."""
        self._label, self._phase = label, ""
        self._stage_started = time.monotonic()
        self.tally.reset()
        if not self.live:
            yield
            return
        stderr = sys.stderr
        self._display = Live(console=self.console, transient=True, refresh_per_second=4,
                             get_renderable=self._renderable, redirect_stdout=False, redirect_stderr=True)
        self._display.start()
        try:
            # log lines go above the live line (written past it, the next redraw would erase them)
            with _log_handlers_writing_to(stderr, sys.stderr):
                yield
        finally:
            self._display.stop()
            self._display = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[RolloutProgress]:
        """The step is in phase ``name`` for the block; yields the reporter to hand the rollout
        engine (for the rollout and validation phases)."""
        self._phase = name
        self._phase_started = time.monotonic()
        if name in ROLLOUT_PHASES:
            self.tally.reset()
        self._shown_rollout_phase = ""
        self._plain_line()
        self._redraw()
        try:
            yield self.tally
        finally:
            if self.plain and name in ROLLOUT_PHASES:
                self._plain_line(done=True)

    def status_text(self, done: bool = False) -> str:
        """The progress line without styling (the live display's text and the plain lines)."""
        parts = [self._label] if self._label else []
        tally = self.tally
        phase = self._phase
        if phase in ROLLOUT_PHASES:
            inner = tally.rollout_phase
            if done:
                phase = f"{phase} done"
            elif phase == "rollout":
                phase = inner or "rollout"
            elif inner:
                phase = f"{phase} ({inner})"
        if phase:
            parts.append(phase)
        if self._phase in ROLLOUT_PHASES and tally.episodes:
            failed = f" ({tally.failed_episodes} failed)" if tally.failed_episodes else ""
            parts.append(f"episodes {tally.finished}/{tally.episodes}{failed}")
            if tally.turn:
                parts.append(f"turn {tally.turn}")
            if tally.simulator_calls or tally.simulator_in_flight:
                parts.append(f"simulator calls {tally.simulator_in_flight} in flight, "
                             f"{tally.simulator_failed} failed")
        parts.append(f"{time.monotonic() - self._stage_started:.0f}s")
        return " · ".join(parts)

    def _renderable(self) -> Spinner:
        self._spinner.update(text=Text(self.status_text()))
        return self._spinner

    def _redraw(self) -> None:
        if self._display is not None:
            self._display.refresh()

    def _changed(self) -> None:
        """A rollout event: redraw when the rollout's phase changes (the 4 Hz refresh covers
        counts); in plain mode, a line every ``plain_interval_s``."""
        if self._display is not None:
            if self.tally.rollout_phase and self.tally.rollout_phase != self._shown_rollout_phase:
                self._shown_rollout_phase = self.tally.rollout_phase
                self._display.refresh()
        elif self.plain and time.monotonic() - self._last_plain >= self.plain_interval_s:
            self._plain_line()

    def _plain_line(self, done: bool = False) -> None:
        if not self.plain:
            return
        self._last_plain = time.monotonic()
        self.console.print(self.status_text(done=done), soft_wrap=True, markup=False)

    # ------------------------------------------------------------ after a step

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if not self.console.is_terminal:
            self.console.print(console_line(step, self.total, metrics, self.env_columns), soft_wrap=True)
            return
        table = Table(show_header=not self._header_done, box=None, pad_edge=False)
        table.add_column("step", justify="right")
        for label, _, _ in self.columns:
            table.add_column(label, justify="right")
        row = [f"{step}/{self.total}"]
        for _, key, fmt in self.columns:
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


@contextlib.contextmanager
def _log_handlers_writing_to(old: IO[str], new: IO[str]) -> Iterator[None]:
    """Point the logging handlers that write to ``old`` at ``new`` for the block."""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old]
    for handler in handlers:
        handler.setStream(new)
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(old)


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
