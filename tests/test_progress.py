"""Progress inside a step (finding 14 of the reliability review).

* the progress interface's counting from a fixed event sequence (no clock);
* the rollout engine in both modes reporting through it with real components (IntentionGym, the
  ``litellm`` simulator over HTTP to a loopback server that fails some calls): the simulator
  calls it counts are the simulator's own calls and failures;
* a tiny ``userrl run`` through the CLI under a pseudo-terminal shows the live display (phase,
  episodes finished out of total) and clears it into one row per step; piped, it prints plain
  lines without cursor control; ``logging.progress=false`` shows neither.
"""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from rich.console import Console
from support.openai_server import OpenAIServer, reply, status
from support.tiny_runs import (JUDGE_VERDICT_NONE, ROOT, is_judge_request, loopback_rollout_config, tiny_recipe,
                               userrl_command)

from userrl_core.data import load_tasks
from userrl_core.plugins import get_plugin_manager
from userrl_core.rollout import RolloutEngine
from userrl_core.rollout.progress import ENVIRONMENT, GENERATE, ProgressTally, busy
from userrl_core.training.progress import ConsoleProgress
from userrl_core.types import EpisodeStatus, GenerationRequest, GenerationResult
from userrl_plugins.intentiongym.tasks import DATA_DIR
from userrl_plugins.simulators.litellm_simulator import build_litellm_simulator

CURSOR_CONTROL = re.compile(r"\x1b\[(\?25[lh]|\d*[ABCDGK]|2K)")  # hide/show cursor, move, erase line


# ------------------------------------------------------------------ the interface's counting


def test_tally_counts_an_event_sequence():
    tally = ProgressTally()
    tally.rollout_started(4)
    assert (tally.episodes, tally.finished, tally.turn, tally.rollout_phase) == (4, 0, 0, "")
    tally.turn_started(0)
    tally.busy(GENERATE, 4)
    assert tally.rollout_phase == "generate" and tally.turn == 1
    tally.busy(GENERATE, -4)
    tally.busy(ENVIRONMENT, 3)
    tally.simulator_call_started()
    tally.simulator_call_started()
    assert tally.simulator_in_flight == 2 and tally.rollout_phase == "environment"
    tally.simulator_call_ended(failed=True)
    tally.episode_finished(failed=True)
    tally.busy(GENERATE, 1)  # async mode: one episode samples while others wait on the simulator
    assert tally.rollout_phase == "generate + environment"
    tally.turn_started(1)
    tally.turn_started(0)  # an episode still on its first turn does not move the counter back
    tally.simulator_call_ended(failed=False)
    tally.busy(GENERATE, -1)
    tally.busy(ENVIRONMENT, -3)
    for _ in range(3):
        tally.episode_finished(failed=False)
    assert (tally.finished, tally.failed_episodes, tally.turn) == (4, 1, 2)
    assert (tally.simulator_in_flight, tally.simulator_calls, tally.simulator_failed) == (0, 2, 1)
    assert tally.rollout_phase == ""
    tally.rollout_started(2)  # validation in batches: a second rollout adds to the same tally
    assert tally.episodes == 6 and tally.finished == 4


def test_busy_leaves_its_phase_when_the_block_raises():
    tally = ProgressTally()
    with pytest.raises(RuntimeError), busy(tally, ENVIRONMENT, 2):
        assert tally.in_phase[ENVIRONMENT] == 2
        raise RuntimeError("backend died")
    assert tally.in_phase[ENVIRONMENT] == 0


def test_console_prints_plain_lines_when_not_a_terminal_and_nothing_when_off():
    out = io.StringIO()
    progress = ConsoleProgress(3, live=True, console=Console(file=out, force_terminal=False, width=200))
    assert progress.plain and not progress.live
    with progress.stage("step 1/3"):
        with progress.phase("rollout") as reporter:
            reporter.rollout_started(2)
            reporter.turn_started(0)
            reporter.episode_finished(failed=False)
            reporter.episode_finished(failed=True)
        with progress.phase("update"):
            pass
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 1/3 · rollout · 0s")
    assert lines[1].startswith("step 1/3 · rollout done · episodes 2/2 (1 failed) · turn 1")
    assert lines[2].startswith("step 1/3 · update")
    assert not CURSOR_CONTROL.search(out.getvalue())

    quiet = io.StringIO()
    off = ConsoleProgress(3, live=False, console=Console(file=quiet, force_terminal=False))
    with off.stage("step 1/3"), off.phase("rollout") as reporter:
        reporter.rollout_started(2)
    assert quiet.getvalue() == ""


LOG_DURING_A_STEP = """
import logging, sys, time
from userrl_core.training.progress import ConsoleProgress
logging.basicConfig(level=logging.WARNING, format="userrl: %(levelname)s: %(message)s", stream=sys.stderr)
progress = ConsoleProgress(2, live=True)
with progress.stage("step 1/2"), progress.phase("rollout") as reporter:
    reporter.rollout_started(4)
    reporter.busy("generate", 4)
    time.sleep(0.6)
    logging.getLogger("userrl").warning("episode failed: a test warning")
    time.sleep(0.6)
"""


def test_a_log_line_during_a_step_is_printed_above_the_live_line_not_erased_by_it():
    code, shown = run_in_pty([sys.executable, "-c", LOG_DURING_A_STEP], cli_env(), timeout=60)
    assert code == 0, shown
    assert "step 1/2 · generate · episodes 0/4" in shown
    # the live line is erased, the warning printed on its own line, then the live line redrawn
    # below it; written straight to stderr it would share the live line and go with its redraw
    assert re.search(r"\x1b\[2Kuserrl: WARNING: episode failed: a test warning\r\n", shown), repr(shown)


# ------------------------------------------------------------------ the engine reports through it

TURNS = 3
FAILING_QUESTION = "Question 1 about request 0"


class QuestionPolicy:
    """A rollout-backend double (the ``RolloutBackend`` protocol, userrl_core/types.py): every
    prompt gets one question naming its task and turn, tokenised with the real tokenizer and
    closed by the end-of-turn token as a chat model's sample is."""

    def __init__(self, tokenizer, openings: list[str], seen: list[str], tally: ProgressTally):
        self.tokenizer, self.openings, self.seen, self.tally = tokenizer, openings, seen, tally
        self.end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.seen.append(self.tally.rollout_phase)
        outputs = []
        for prompt in request.prompts:
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            index = next(i for i, opening in enumerate(self.openings) if opening in text)
            turn = text.count("<|im_start|>assistant") - 1
            question = f"Question {turn} about request {index}: which dates suit you?"
            outputs.append(self.tokenizer.encode(question, add_special_tokens=False) + [self.end_of_turn])
        await asyncio.sleep(0.01)
        return GenerationResult(outputs, None)

    def sync_weights(self, source) -> None:
        return None


class Recording(ProgressTally):
    """A tally that also keeps the most simulator calls it saw in flight at once."""

    def reset(self) -> None:
        super().reset()
        self.peak_in_flight = 0

    def simulator_call_started(self) -> None:
        super().simulator_call_started()
        self.peak_in_flight = max(self.peak_in_flight, self.simulator_in_flight)


def answer(body):
    """The loopback simulator: HTTP 500 for any call about task 0's second question (the
    simulator then raises after its retries), otherwise a short delay and a normal answer."""
    content = " ".join(str(m.get("content", "")) for m in (body or {}).get("messages", []))
    if FAILING_QUESTION in content:
        return status(500)
    return reply(JUDGE_VERDICT_NONE if is_judge_request(body) else "Sometime in May, please.", delay=0.05)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_engine_reports_episodes_turns_phases_and_the_simulators_own_calls(smol_tokenizer, mode):
    registry = get_plugin_manager().registry
    tasks = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", registry, max_tasks=3).tasks
    openings = [t.prompt[-1]["content"] for t in tasks]
    with OpenAIServer(default=answer) as server:
        config = loopback_rollout_config(mode, server.base_url, turns=TURNS, n=2,
                                         max_concurrency=4)
        simulator = build_litellm_simulator(config=config.simulator)
        tally, seen = Recording(), []
        engine = RolloutEngine(QuestionPolicy(smol_tokenizer, openings, seen, tally), registry, simulator, config)
        result = asyncio.run(engine.run(tasks, seed=1, progress=tally))
        served, served_at_once = server.request_count, server.max_in_flight

    failed = [e for e in result.episodes if e.status is not EpisodeStatus.OK]
    assert [e.group for e in failed] == [0, 0]  # task 0's two samples failed at their second turn
    assert (tally.episodes, tally.finished, tally.failed_episodes) == (6, 6, 2)
    assert tally.turn == TURNS
    stats = simulator.stats()
    assert tally.simulator_calls == stats["calls"] == served > 0
    assert tally.simulator_failed == stats["failures"] >= 2
    # in flight: awaiting the simulator, including calls queued behind its own concurrency bound
    assert tally.simulator_in_flight == 0 and tally.peak_in_flight >= max(served_at_once, 2)
    assert tally.in_phase == {GENERATE: 0, ENVIRONMENT: 0}
    assert "generate" in seen[0]
    if mode == "sync":  # the barrier: nothing is in the environment while the policy samples
        assert set(seen) == {"generate"}
    else:
        assert any("environment" in phase for phase in seen)


# ------------------------------------------------------------------ through the CLI


def run_in_pty(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdout and stderr; its exit code and output."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed with the process
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        return process.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)


@pytest.fixture(scope="module")
def simulator_server():
    with OpenAIServer(default=lambda body: reply(JUDGE_VERDICT_NONE if is_judge_request(body) else "Fine.")) as srv:
        yield srv


def progress_recipe(tmp_path, tiny_model_dir, base_url, progress: bool):
    return tiny_recipe(tmp_path, tiny_model_dir, api_base=base_url,
                       trainer={"total_training_steps": 1, "test_freq": 1, "val_before_train": False,
                                "report": False},
                       logging={"progress": progress})


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40"}


def test_cli_run_shows_the_live_display_in_a_terminal_and_plain_lines_when_piped(tmp_path, tiny_model_dir,
                                                                                 simulator_server):
    recipe = progress_recipe(tmp_path / "live", tiny_model_dir, simulator_server.base_url, progress=True)
    code, shown = run_in_pty(userrl_command("run", str(recipe), "--run-dir", str(tmp_path / "live" / "run")),
                             cli_env())
    assert code == 0, shown[-3000:]
    assert CURSOR_CONTROL.search(shown), "no live display: nothing was redrawn"
    assert re.search(r"step 1/1 · (generate|environment)[^\n]*· episodes \d/4", shown), shown[-3000:]
    assert re.search(r"step 1/1 · validate[^\n]*· episodes \d+/\d+", shown)
    assert "status: finished" in shown

    piped = subprocess.run(userrl_command("run", str(recipe), "--run-dir", str(tmp_path / "piped")), cwd=ROOT,
                           env=cli_env(), capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert not CURSOR_CONTROL.search(piped.stderr) and "\x1b" not in piped.stderr
    lines = piped.stderr.splitlines()
    assert any(re.match(r"step 1/1 · rollout done · episodes 4/4 · turn \d", line) for line in lines), lines
    assert any(line.startswith("step 1/1 · update") for line in lines)
    assert any(line.startswith("step 1/1 · validate done · episodes") for line in lines)
    assert any(line.startswith("step 1/1 |") for line in lines)  # the step's one line


def test_cli_run_with_progress_off_shows_no_live_display(tmp_path, tiny_model_dir, simulator_server):
    recipe = progress_recipe(tmp_path, tiny_model_dir, simulator_server.base_url, progress=False)
    code, shown = run_in_pty(userrl_command("run", str(recipe), "--run-dir", str(tmp_path / "run")), cli_env())
    assert code == 0, shown[-3000:]
    assert "episodes" not in shown and "· rollout" not in shown
    assert not re.search(r"\x1b\[\?25l", shown)  # rich hides the cursor only for a live display
    assert "status: finished" in shown
