"""The FSDP ranks as local processes: spawned on this machine, driven over pipes.

:class:`LocalRankGroup` starts ``world`` processes (one per rank, each hosting an
:class:`~userrl_plugins.backends.fsdp_backend.FSDPWorker`), rendezvous on a free local port, and
runs each call on every rank at once (the calls are collectives). Beside that, a second pipe
per rank carries requests to one rank's rollout engine (:meth:`LocalRankGroup.submit_engine`):
many may be in flight at once, answered in any order. The CPU tests use it with gloo;
``userrl_plugins.backends.ray_placement`` is the same surface over Ray actors on GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import socket
import threading
import time
import traceback
from typing import Any

import torch


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _serve_engine_requests(worker: Any, conn: Any) -> None:
    """Rank side of the engine pipe: each ``(id, method, args)`` goes to the rank's engine without
    waiting for the ones before it; each answer ``(id, status, value)`` is sent when it is ready."""
    lock = threading.Lock()

    def answer(request_id: int, status: str, value: Any) -> None:
        with lock, contextlib.suppress(OSError, ValueError):
            conn.send((request_id, status, value))

    def on_done(request_id: int, future: Any) -> None:
        exc = future.exception()
        if exc is None:
            answer(request_id, "ok", future.result())
        else:
            answer(request_id, "error", f"{type(exc).__name__}: {exc}")

    while True:
        try:
            request_id, method, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            future = worker.submit_engine(method, *args)
        except Exception as exc:
            answer(request_id, "error", f"{type(exc).__name__}: {exc}")
            continue
        future.add_done_callback(lambda f, r=request_id: on_done(r, f))


def _rank_main(rank: int, world: int, port: int, conn: Any, engine_conn: Any, config: Any, model_dir: str,
               total_steps: int | None, threads: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(threads)
    from userrl_plugins.backends.fsdp_backend import FSDPWorker

    worker = None
    try:
        worker = FSDPWorker(config, model_dir, total_steps)
        threading.Thread(target=_serve_engine_requests, args=(worker, engine_conn), daemon=True,
                         name=f"userrl-rank{rank}-engine-requests").start()
        conn.send(("ok", None))
        while True:
            message = conn.recv()
            if message is None:
                break
            method, args, kwargs = message
            try:
                conn.send(("ok", getattr(worker, method)(*args, **kwargs)))
            except Exception as exc:  # sent back to the driver, which raises it
                conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if worker is not None:
            worker.close()
        conn.close()


class RankGroupError(RuntimeError):
    """A rank raised; the message carries its traceback."""


class LocalRankGroup:
    """``world`` rank processes on this machine (spawned), driven over pipes. One call runs on
    every rank at once (the calls are collectives) and returns every rank's result."""

    def __init__(self, config: Any, model_dir: str, *, world: int, total_steps: int | None = None,
                 threads_per_rank: int = 1) -> None:
        context = mp.get_context("spawn")
        port = free_port()
        self.processes: list[Any] = []
        self.conns: list[Any] = []
        self.engine_conns: list[Any] = []
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        for rank in range(world):
            parent, child = context.Pipe()
            engine_parent, engine_child = context.Pipe()
            process = context.Process(
                target=_rank_main,
                args=(rank, world, port, child, engine_child, config, model_dir, total_steps, threads_per_rank),
                daemon=False, name=f"userrl-fsdp-rank{rank}",  # not daemonic: an engine in it starts processes
            )
            process.start()
            child.close()
            engine_child.close()
            self.processes.append(process)
            self.conns.append(parent)
            self.engine_conns.append(engine_parent)
        self._collect()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        for conn in self.conns:
            conn.send((method, args, kwargs))
        return self._collect()

    async def submit_engine(self, rank: int, method: str, *args: Any) -> Any:
        """``method(*args)`` on one rank's rollout engine, awaited without blocking the loop or
        the other requests in flight."""
        if not self._readers:
            self._readers = [threading.Thread(target=self._read_engine_answers, args=(conn,), daemon=True,
                                              name=f"userrl-engine-answers{rank}")
                             for rank, conn in enumerate(self.engine_conns)]
            for reader in self._readers:
                reader.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        request_id = next(self._ids)
        self._pending[request_id] = (loop, future)
        with self._send_lock:
            self.engine_conns[rank].send((request_id, method, args))
        return await future

    def _read_engine_answers(self, conn: Any) -> None:
        while True:
            try:
                request_id, status, value = conn.recv()
            except (EOFError, OSError):
                error = RankGroupError("a rank's engine pipe closed (the rank exited)")
                for loop, future in list(self._pending.values()):
                    loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_exception(error))
                return
            loop, future = self._pending.pop(request_id)
            if status == "ok":
                loop.call_soon_threadsafe(lambda f=future, v=value: f.done() or f.set_result(v))
            else:
                error = RankGroupError(value)
                loop.call_soon_threadsafe(lambda f=future, e=error: f.done() or f.set_exception(e))

    def _collect(self, grace_after_error: float = 5.0) -> list[Any]:
        """Every rank's answer, in rank order. When one rank fails, the others are likely stuck
        in a collective: they get a short grace, then the whole group is stopped."""
        answers: dict[int, tuple[str, Any]] = {}
        deadline: float | None = None
        while len(answers) < len(self.conns):
            for rank, conn in enumerate(self.conns):
                if rank in answers or not conn.poll(0.05):
                    if rank not in answers and not self.processes[rank].is_alive() and not conn.poll(0):
                        answers[rank] = ("error", f"rank {rank} exited (exit code {self.processes[rank].exitcode})")
                    continue
                try:
                    answers[rank] = conn.recv()
                except EOFError:
                    answers[rank] = ("error", f"rank {rank} exited (exit code {self.processes[rank].exitcode})")
            if deadline is None and any(status == "error" for status, _ in answers.values()):
                deadline = time.monotonic() + grace_after_error
            if deadline is not None and time.monotonic() > deadline:
                break
        errors = [value for status, value in answers.values() if status == "error"]
        if errors or len(answers) < len(self.conns):
            self.shutdown()
            raise RankGroupError("\n".join(errors) or "ranks did not answer")
        return [answers[rank][1] for rank in range(len(self.conns))]

    def shutdown(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for conn in self.engine_conns:
            with contextlib.suppress(Exception):
                conn.close()
        self.processes, self.conns, self.engine_conns = [], [], []
