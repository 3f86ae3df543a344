"""A lean chat-completions client for OpenAI-compatible servers (SGLang, vLLM, llama.cpp).

Why it exists: profiling 256 concurrent simulator calls through ``litellm.acompletion`` showed
about 8 ms of CPU per call on the client (LiteLLM's logging worker and cost bookkeeping, the
OpenAI SDK's request transformation, httpx), against well under 1 ms for the HTTP exchange
itself. On a small machine that CPU, not the server, set the pace of a rollout. For the one
case where no provider translation is needed (``openai/<name>`` with an ``api_base``), the
``litellm`` simulator sends the request with this client instead (``simulator.extra.transport``
picks; see docs/benchmarks.md for the measurements).

* One ``aiohttp`` session, i.e. one keep-alive connection pool, per event loop. A session is
  bound to the loop that made it; it is closed by :meth:`aclose`, or when ``asyncio.run`` shuts
  its loop down (an async generator that the loop finalises holds it).
* Failures are raised as the OpenAI SDK's exception classes (``RateLimitError``,
  ``InternalServerError``, ``APITimeoutError``, ...), the same ones LiteLLM raises, so retry
  decisions and error texts do not depend on the transport.
* A body that is not a JSON object raises :class:`MalformedBody` (retryable, like LiteLLM's
  decode errors).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any, AsyncIterator

import aiohttp
import httpx
import openai

_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


class MalformedBody(Exception):
    """The server answered, but not with a JSON object."""


def status_error(status: int, url: str, text: str, headers: Any = None) -> openai.APIStatusError:
    """The OpenAI SDK exception for an HTTP error status, its message taken from the body; the
    response's headers travel with it (``Retry-After``)."""
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = None
    message = text.strip()[:400]
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        message = str(body["error"]["message"])
    cls = _STATUS_ERRORS.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    response = httpx.Response(status, request=httpx.Request("POST", url), headers=dict(headers or {}))
    return cls(f"Error code: {status} - {message}", response=response, body=body)


class ChatCompletionsClient:
    """POSTs chat completions to ``{api_base}/chat/completions``; safe to share between tasks."""

    def __init__(self, api_base: str, *, api_key: str | None) -> None:
        self.sessions_made = 0
        self.url = api_base.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )
        self._keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]] = (
            weakref.WeakKeyDictionary()
        )

    async def create(self, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send one request; returns the decoded JSON object or raises (see the module doc)."""
        session = await self._session()
        data = json.dumps(body)
        try:
            async with session.post(self.url, data=data, headers=self._headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                text = await response.text()
                status = response.status
                headers = response.headers
        except asyncio.TimeoutError:
            raise openai.APITimeoutError(request=httpx.Request("POST", self.url)) from None
        except aiohttp.ClientError as exc:
            raise openai.APIConnectionError(message=f"Connection error: {exc}",
                                            request=httpx.Request("POST", self.url)) from None
        if status >= 400:
            raise status_error(status, self.url, text, headers)
        try:
            decoded = json.loads(text)
        except ValueError:
            raise MalformedBody(f"the response body is not JSON: {text[:160]!r}") from None
        if not isinstance(decoded, dict):
            raise MalformedBody(f"the response body is not a JSON object: {text[:160]!r}")
        return decoded

    def open_sessions(self) -> int:
        """Sessions not closed yet (one per live event loop that used this client)."""
        return sum(1 for session in self._sessions.values() if not session.closed)

    async def aclose(self) -> None:
        """Close the current loop's session (sessions of other loops close with their loop)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        self._keepers.pop(loop, None)
        if session is not None and not session.closed:
            await session.close()

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old in [other for other in self._sessions if other.is_closed()]:
                # a session refers to its loop, so the weak keys alone would never let go
                self._sessions.pop(old, None)
                self._keepers.pop(old, None)
            # no connection limit here: the simulator's semaphore bounds the requests in flight
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
            self._sessions[loop] = session
            self.sessions_made += 1
            keeper = _close_at_loop_shutdown(session)
            await keeper.__anext__()
            self._keepers[loop] = keeper
        return session


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """Suspended until the loop finalises it (``asyncio.run`` does at exit), then closes the
    session there, while the loop still runs."""
    try:
        yield
    finally:
        if not session.closed:
            await session.close()
