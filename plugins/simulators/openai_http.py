"""A lean chat-completions client for OpenAI-compatible servers (SGLang, vLLM, llama.cpp).

Why it exists: profiling 256 concurrent simulator calls through ``litellm.acompletion`` showed
about 8 ms of CPU per call on the client (LiteLLM's logging worker and cost bookkeeping, the
OpenAI SDK's request transformation, httpx), against well under 1 ms for the HTTP exchange
itself. On a small machine that CPU, not the server, set the pace of a rollout. For the one
case where no provider translation is needed (``openai/<name>`` with an ``api_base``), the
``litellm`` simulator sends the request with this client instead (``simulator.extra.transport``
picks; see docs/benchmarks.md for the measurements).

* HTTP goes through :class:`.http1.Http1Client`: keep-alive connections pooled per event loop,
  closed by :meth:`ChatCompletionsClient.aclose` or when ``asyncio.run`` shuts the loop down.
* Failures are raised as the OpenAI SDK's exception classes (``RateLimitError``,
  ``InternalServerError``, ``APITimeoutError``, ...), the same ones LiteLLM raises, so retry
  decisions and error texts do not depend on the transport.
* A body that is not a JSON object raises :class:`MalformedBody` (retryable, like LiteLLM's
  decode errors). Bodies are read and written with ``orjson`` (strict JSON, UTF-8): on a 3 KB
  chat request it takes about 1 us where ``json.dumps`` takes about 18 us, twice per
  episode-turn.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import orjson

from userrl_plugins.simulators.http1 import Http1Client

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
        self.url = api_base.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = Http1Client(self.url, headers=headers)

    async def create(self, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send one request; returns the decoded JSON object or raises (see the module doc)."""
        try:
            response = await self._http.post(orjson.dumps(body), timeout=timeout)
        except asyncio.TimeoutError:
            raise openai.APITimeoutError(request=httpx.Request("POST", self.url)) from None
        except OSError as exc:  # refused, reset, closed mid-response, not HTTP
            raise openai.APIConnectionError(message=f"Connection error: {exc}",
                                            request=httpx.Request("POST", self.url)) from None
        if response.status >= 400:
            raise status_error(response.status, self.url, response.body.decode("utf-8", "replace"),
                               response.headers)
        try:
            decoded = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            text = response.body.decode("utf-8", "replace")
            raise MalformedBody(f"the response body is not JSON: {text[:160]!r}") from None
        if not isinstance(decoded, dict):
            text = response.body.decode("utf-8", "replace")
            raise MalformedBody(f"the response body is not a JSON object: {text[:160]!r}")
        return decoded

    @property
    def connections_made(self) -> int:
        return self._http.connections_made

    def open_connections(self) -> int:
        """Idle keep-alive connections held open (they close with their event loop)."""
        return self._http.open_connections()

    async def aclose(self) -> None:
        """Close the current loop's connections (those of other loops close with their loop)."""
        await self._http.aclose()
