"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

The server runs its own asyncio loop (aiohttp) in a background thread, so it serves
synchronous tests, asynchronous tests and benchmarks alike, and a client that blocks its own
loop cannot stall it. Each request takes the next scripted :class:`Behaviour` (a normal reply,
an HTTP status, a hang, a raw body) or, once the script is empty, the default one. Everything
the tests need to check is recorded: request bodies and headers, requests in flight at most,
TCP connections used.

Usage::

    with OpenAIServer() as server:
        server.script(status(500), reply("hello"))
        ... call server.base_url ...
        assert server.request_count == 2
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request.

    ``kind`` is ``"reply"`` (a well-formed completion whose content is ``text``), ``"status"``
    (an error body with HTTP ``status``), ``"raw"`` (``body`` sent verbatim with ``status`` and
    ``content_type``) or ``"hang"`` (nothing is sent for ``delay`` seconds, then the connection
    is closed). ``delay`` is waited before any answer.
    """

    kind: str = "reply"
    text: str = ""
    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    delay: float = 0.0
    prompt_tokens: int = 11
    completion_tokens: int = 7
    headers: tuple[tuple[str, str], ...] = ()


def reply(text: str, *, delay: float = 0.0, prompt_tokens: int = 11, completion_tokens: int = 7) -> Behaviour:
    """A normal completion whose message content is ``text``."""
    return Behaviour("reply", text=text, delay=delay, prompt_tokens=prompt_tokens,
                     completion_tokens=completion_tokens)


def status(code: int, *, delay: float = 0.0, message: str = "scripted failure",
           headers: dict[str, str] | None = None) -> Behaviour:
    """An HTTP error with an OpenAI-style error body (and extra headers, e.g. Retry-After)."""
    body = json.dumps({"error": {"message": message, "type": "server_error", "code": code}})
    return Behaviour("status", status=code, body=body, delay=delay, headers=tuple((headers or {}).items()))


def raw(body: str, *, status: int = 200, content_type: str = "application/json", delay: float = 0.0) -> Behaviour:
    """Send ``body`` verbatim (malformed JSON, HTML, empty bodies)."""
    return Behaviour("raw", status=status, body=body, content_type=content_type, delay=delay)


def hang(seconds: float) -> Behaviour:
    """Send nothing for ``seconds`` (longer than the client's timeout), then drop the connection."""
    return Behaviour("hang", delay=seconds)


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    received_at: float
    behaviour: Behaviour


@dataclass
class _Counters:
    in_flight: int = 0
    max_in_flight: int = 0
    transports: set[int] = field(default_factory=set)


class OpenAIServer:
    """The server. ``start()`` (or ``with``) binds a free port on 127.0.0.1; ``stop()`` ends it.

    ``default`` answers requests once the script is empty: a :class:`Behaviour` or a callable
    ``f(request_body) -> Behaviour``. ``max_hang_s`` bounds every hang so a test can never wait
    forever.
    """

    def __init__(self, default: Behaviour | Callable[[dict[str, Any] | None], Behaviour] | None = None,
                 *, model: str = "test-model", max_hang_s: float = 30.0) -> None:
        self.default = default if default is not None else reply("ok")
        self.model = model
        self.max_hang_s = max_hang_s
        self.requests: list[RecordedRequest] = []
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``) clients should use."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._script.extend(behaviours)

    def reset(self) -> None:
        """Forget recorded requests, the script and the counters."""
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self._counters = _Counters()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._counters.max_in_flight

    @property
    def connection_count(self) -> int:
        """Distinct TCP connections that carried requests (keep-alive reuse keeps it low)."""
        with self._lock:
            return len(self._counters.transports)

    def start(self) -> "OpenAIServer":
        self._thread = threading.Thread(target=self._serve, name="openai-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=15):
            raise RuntimeError("the test server did not start within 15 s")
        if self._start_error is not None:
            raise RuntimeError(f"the test server failed to start: {self._start_error}")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)
        self._loop = None
        self._thread = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:  # handlers still sleeping in a hang
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _next_behaviour(self, body: dict[str, Any] | None) -> Behaviour:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self.default(body) if callable(self.default) else self.default

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        behaviour = self._next_behaviour(body)
        with self._lock:
            self.requests.append(RecordedRequest(request.path, body, dict(request.headers), time.time(), behaviour))
            counters = self._counters
            counters.in_flight += 1
            counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
            if request.transport is not None:
                counters.transports.add(id(request.transport))
        try:
            return await self._answer(request, behaviour, body)
        finally:
            with self._lock:
                counters.in_flight -= 1

    async def _answer(self, request: web.Request, behaviour: Behaviour, body: dict[str, Any] | None) -> web.StreamResponse:
        if behaviour.kind == "hang":
            await asyncio.sleep(min(behaviour.delay, self.max_hang_s))
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=504, text="hung")
        if behaviour.delay:
            await asyncio.sleep(min(behaviour.delay, self.max_hang_s))
        if behaviour.kind == "reply":
            return web.json_response(self._completion(behaviour, body))
        if behaviour.kind in ("status", "raw"):
            return web.Response(status=behaviour.status, text=behaviour.body, content_type=behaviour.content_type,
                                headers=dict(behaviour.headers))
        raise ValueError(f"unknown behaviour kind {behaviour.kind!r}")

    def _completion(self, behaviour: Behaviour, body: dict[str, Any] | None) -> dict[str, Any]:
        model = (body or {}).get("model") or self.model
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": behaviour.text},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": behaviour.prompt_tokens,
                "completion_tokens": behaviour.completion_tokens,
                "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
            },
        }
