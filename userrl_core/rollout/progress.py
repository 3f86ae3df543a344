"""What a rollout reports while it runs: the progress interface, its counting, and the
simulator wrapper that counts calls where they happen.

The engine calls a :class:`RolloutProgress` (the trainer passes one in; the console draws it).
The interface is plain method calls with no display code, so the engine stays free of rich and
of any notion of a terminal. :class:`ProgressTally` is the counting every display shares: it
turns the event sequence into episodes finished out of total, the turn reached, which phase the
episodes are in, and simulator calls in flight and failed.

Simulator calls are counted by :class:`CountedSimulator`, the object environments receive as
their simulator for the rollout: every ``complete`` an environment makes (user reply, judge,
grader) passes through it, so "in flight" is what is awaiting the simulator right now, and
"failed" is what raised after the simulator's own retries.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from userrl_core.types import Simulator, SimulatorRequest, SimulatorResponse

GENERATE = "generate"
ENVIRONMENT = "environment"


class RolloutProgress(Protocol):
    """Events of one rollout, in the order they happen. ``busy`` counts episodes entering (+n)
    and leaving (-n) a phase (``generate``: the policy is sampling their turn; ``environment``:
    their action is being stepped). Implementations must be cheap: they run in the event loop."""

    def rollout_started(self, episodes: int) -> None: ...

    def turn_started(self, turn: int) -> None: ...

    def busy(self, phase: str, episodes: int) -> None: ...

    def episode_finished(self, failed: bool) -> None: ...

    def simulator_call_started(self) -> None: ...

    def simulator_call_ended(self, failed: bool) -> None: ...


class ProgressTally:
    """The counts a display shows, kept from :class:`RolloutProgress` events. Subclasses that
    draw override :meth:`changed` (called after every event)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.episodes = 0
        self.finished = 0
        self.failed_episodes = 0
        self.turn = 0  # 1-based number of the furthest turn any episode has started; 0: none yet
        self.in_phase = {GENERATE: 0, ENVIRONMENT: 0}
        self.simulator_in_flight = 0
        self.simulator_calls = 0  # calls that ended, either way
        self.simulator_failed = 0

    @property
    def rollout_phase(self) -> str:
        """``generate``, ``environment``, both joined by ``+`` (async mode overlaps them), or ``""``."""
        return " + ".join(name for name, count in self.in_phase.items() if count > 0)

    def changed(self) -> None:
        """Hook for displays; the tally itself only counts."""

    # RolloutProgress
    def rollout_started(self, episodes: int) -> None:
        self.episodes += episodes  # validation in batches runs several rollouts into one tally
        self.changed()

    def turn_started(self, turn: int) -> None:
        if turn + 1 > self.turn:
            self.turn = turn + 1
            self.changed()

    def busy(self, phase: str, episodes: int) -> None:
        self.in_phase[phase] = self.in_phase.get(phase, 0) + episodes
        self.changed()

    def episode_finished(self, failed: bool) -> None:
        self.finished += 1
        self.failed_episodes += int(failed)
        self.changed()

    def simulator_call_started(self) -> None:
        self.simulator_in_flight += 1
        self.changed()

    def simulator_call_ended(self, failed: bool) -> None:
        self.simulator_in_flight -= 1
        self.simulator_calls += 1
        self.simulator_failed += int(failed)
        self.changed()


class busy:  # lower case: used like a function, ``with busy(progress, phase, n):``
    """``episodes`` are in ``phase`` for the duration of the block (left again however it ends).
    A class rather than a generator-based context manager: the async mode enters two per
    episode-turn, and this costs a quarter as much."""

    __slots__ = ("_progress", "_phase", "_episodes")

    def __init__(self, progress: RolloutProgress, phase: str, episodes: int) -> None:
        self._progress, self._phase, self._episodes = progress, phase, episodes

    def __enter__(self) -> None:
        self._progress.busy(self._phase, self._episodes)

    def __exit__(self, *exc: Any) -> None:
        self._progress.busy(self._phase, -self._episodes)


class CountedSimulator:
    """The run's simulator as one episode's environment sees it: the same calls, reported to
    ``progress`` as they start and end, and in :attr:`seconds` the wall time during which at
    least one of its calls was running (the episode's simulator time, whichever way the calls
    ended; an environment that makes two calls at once counts their overlap once, so the time
    stays within its step's). A call that raises
    (``SimulatorError`` after the simulator's retries, or any other error) is a failed call; a
    cancelled one ends unfailed."""

    def __init__(self, inner: Simulator, progress: RolloutProgress) -> None:
        self._inner = inner
        self._progress = progress
        self.seconds = 0.0
        self._running = 0
        self._since = 0.0

    @property
    def name(self) -> str:
        return self._inner.name

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self._progress.simulator_call_started()
        failed = False
        if self._running == 0:
            self._since = time.perf_counter()
        self._running += 1
        try:
            return await self._inner.complete(request)
        except Exception:
            failed = True
            raise
        finally:
            self._running -= 1
            if self._running == 0:
                self.seconds += time.perf_counter() - self._since
            self._progress.simulator_call_ended(failed)

    def stats(self) -> dict[str, float]:
        return self._inner.stats()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __getattr__(self, attribute: str) -> Any:  # anything else a plugin's environment reads
        return getattr(self._inner, attribute)
