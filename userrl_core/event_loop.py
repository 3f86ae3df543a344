"""Running the framework's coroutines: on uvloop where it is installed, else on asyncio's loop.

A rollout's client work is mostly event-loop bookkeeping (sockets, futures, callbacks) for
thousands of simulator calls; uvloop does that in C and measured less client CPU per
episode-turn (docs/benchmarks.md, item 1). It is a declared dependency on Linux and macOS;
elsewhere the standard loop is used.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def loop_factory() -> Any:
    """``uvloop.new_event_loop`` when uvloop imports, else None (asyncio's default loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop available.

    The coroutine's result is handed over outside the main task: on leaving, Python 3.11's
    runner formats the main task's ``repr`` (restoring the SIGINT handler builds a message
    that names it), and a finished task's repr includes its result, so a step's rollout of
    thousands of episodes was rendered to text once per run, for nothing (about 0.2 ms of
    client CPU per episode-turn in docs/benchmarks.md, item 1)."""
    handed: list[T] = []

    async def main() -> None:
        handed.append(await coroutine)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
    return handed[0]
