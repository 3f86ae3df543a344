"""A simulator model server that the run starts, waits for, routes to and stops.

The 4B recipe serves Qwen3-30B-A3B-Instruct-2507 with SGLang's OpenAI-compatible server on its
own GPU. Starting it by hand, remembering to stop it and pointing the simulator at it were
manual steps (and ``pkill -f sglang`` the cleanup). :class:`ManagedSimulatorServer` does all
three: it launches ``python -m sglang.launch_server`` in its own process group with
``CUDA_VISIBLE_DEVICES`` set to the recipe's GPU, polls ``/health`` (then ``/v1/models``) on
the loopback until it answers or the start-up time-out passes, gives the simulator config the
server's ``api_base``, and on exit terminates the whole process group (SIGTERM, then SIGKILL).

``userrl simulator serve RECIPE`` runs the same object in the foreground.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from userrl_core.config.schema import PLUGIN_DEFAULTS
from userrl_core.errors import UserError
from userrl_core.types import Requirements

log = logging.getLogger(__name__)

def server_requirements(settings: Any) -> Requirements:
    """The server program's package (``simulator_server.program``'s top-level module)."""
    package = settings.program.split(".")[0]
    hint = PLUGIN_DEFAULTS["simulator_server"]["install_hint"] if settings.program == _DEFAULT_PROGRAM \
        else f"install the package that provides {settings.program}"
    return Requirements(modules={package: hint}, why=f"the simulator server runs python -m {settings.program}")


def launcher_for(settings: Any) -> tuple[str, ...]:
    """``python -m <simulator_server.program>`` with this interpreter."""
    return (sys.executable, "-m", settings.program)


_DEFAULT_PROGRAM = PLUGIN_DEFAULTS["simulator_server"]["program"]


class SimulatorServerError(UserError):
    """The managed simulator server did not start or answer."""


def build_server_command(settings: Any, launcher: Sequence[str] | None = None) -> list[str]:
    """The server's command line (SGLang's launch arguments) from a ``SimulatorServerConfig``."""
    command = list(launcher or launcher_for(settings)) + [
        "--model-path", settings.model,
        "--host", settings.host,
        "--port", str(settings.port),
        "--context-length", str(settings.context_length),
        "--mem-fraction-static", str(settings.mem_fraction),
        "--max-running-requests", str(settings.max_running_requests),
    ]
    if settings.served_model_name:
        command += ["--served-model-name", settings.served_model_name]
    return command + list(settings.extra_args)


def routed_simulator_config(simulator: Any, settings: Any) -> Any:
    """The simulator config pointed at the managed server: ``openai/<served name>`` at its
    ``/v1`` address. No API key is needed for a loopback server."""
    served = settings.served_model_name or settings.model
    return simulator.model_copy(update={
        "name": settings.simulator,
        "model": f"openai/{served}",
        "api_base": f"http://{_client_host(settings.host)}:{settings.port}/v1",
        "api_key_env": None,
    })


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "", "::"} else host


class ManagedSimulatorServer:
    """Start, health-check and stop one simulator server process group.

    ``launcher`` replaces ``python -m <simulator_server.program>`` (tests run a small
    OpenAI-compatible stand-in through it). Use as a context manager; ``stop`` is idempotent
    and also runs when start-up fails.
    """

    def __init__(
        self,
        settings: Any,
        *,
        launcher: Sequence[str] | None = None,
        log_path: str | Path | None = None,
        poll_interval: float = 0.5,
        stop_timeout: float = 20.0,
    ) -> None:
        self.settings = settings
        self.command = build_server_command(settings, launcher)
        self.base_url = f"http://{_client_host(settings.host)}:{settings.port}"
        self.log_path = Path(log_path) if log_path else _new_log_file()
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "ManagedSimulatorServer":
        if self.process is not None:
            return self
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = str(self.settings.gpu)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")
        log.info("starting simulator server on GPU %s: %s", self.settings.gpu, " ".join(self.command))
        started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: stop() reaches every child
            )
        except OSError as exc:
            raise SimulatorServerError(f"simulator_server: cannot start {self.command[0]!r}: {exc}") from None
        finally:
            log_file.close()
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info("simulator server healthy at %s after %.1f s", self.base_url, self.startup_seconds)
        return self

    def _wait_healthy(self, started: float) -> None:
        deadline = started + self.settings.startup_timeout
        while True:
            code = self.process.poll() if self.process else None
            if code is not None:
                raise SimulatorServerError(
                    f"simulator_server: the server exited with status {code} before it was healthy; "
                    f"last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            if self._answers("/health") and self._answers("/v1/models"):
                return
            if time.monotonic() > deadline:
                raise SimulatorServerError(
                    f"simulator_server: not healthy after {self.settings.startup_timeout:g} s "
                    f"(simulator_server.startup_timeout); last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(self.poll_interval)

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        """Terminate the server's whole process group; SIGKILL what is left after the grace."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            pgid = os.getpgid(process.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            if pgid is not None:
                _signal_group(pgid, signal.SIGKILL)
            process.wait(timeout=10)
        if pgid is not None:
            _signal_group(pgid, signal.SIGKILL)  # children that outlived the leader
        log.info("simulator server stopped")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(deque(handle, maxlen=lines)).rstrip()
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "ManagedSimulatorServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _new_log_file() -> Path:
    handle, name = tempfile.mkstemp(prefix="userrl-simulator-server-", suffix=".log")
    os.close(handle)
    return Path(name)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
