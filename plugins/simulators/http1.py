"""A keep-alive HTTP/1.1 client for POSTing JSON to one origin, written on asyncio protocols.

Why it exists: a rollout makes two simulator calls per episode-turn, thousands per step. With
``aiohttp`` each call cost about 1 ms of client CPU on a small machine (request and payload
objects, header multidicts, timers, the response stream), which alone was the whole per
episode-turn budget (docs/benchmarks.md, item 1). A chat-completions call needs a small part
of HTTP: one method, one origin, a JSON body with a ``Content-Length``, and a response framed
by ``Content-Length``, ``Transfer-Encoding: chunked`` or the connection's close. That part is
written here directly on :class:`asyncio.Protocol`, which uvloop runs in C.

* Connections are kept alive and pooled per event loop (a transport belongs to the loop that
  made it). A connection is reused only after a complete response that allowed keep-alive
  and left no stray bytes; anything else closes it.
* A reused connection that the server had already closed (idle keep-alive timeout) is
  detected when it dies before any byte of the response; the request is then sent once more
  on a fresh connection, as a browser or urllib3 would. Any other failure is raised.
* ``timeout`` bounds the whole exchange (connect, send, the full response); on expiry the
  connection is aborted and :class:`asyncio.TimeoutError` is raised.
* ``https`` origins use the default TLS context (certificate and host name verified).

Failures are raised as :class:`ConnectionError` (refused, reset, closed mid-response),
:class:`asyncio.TimeoutError`, or :class:`ProtocolError` (a response that is not HTTP/1.x).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD_BYTES = 64 * 1024


class ProtocolError(ConnectionError):
    """The server's bytes are not a well-formed HTTP/1.x response."""


@dataclass(frozen=True)
class Response:
    """One response: its status, headers (names in lower case) and whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; parses the response to the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._waiter: asyncio.Future[Response] | None = None
        self._buffer = bytearray()
        self._received_any = False
        self._head: tuple[int, dict[str, str], bool] | None = None  # status, headers, keep-alive
        self._length: int | None = None  # Content-Length framing
        self._chunked = False
        self._chunks: list[bytes] = []
        self._scan = 0  # where the chunk parser goes on in the buffer
        self.keep_alive = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.abort()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        self._received_any = True
        self._buffer += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost decides what the close means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head is not None and self._length is None and not self._chunked:
            status, headers, _ = self._head  # a body delimited by the close: it is complete now
            self.keep_alive = False
            waiter.set_result(Response(status, headers, bytes(self._buffer)))
            return
        what = "in the middle of the response" if self._received_any else "before responding"
        error = _StaleConnection if (self.reused and not self._received_any) else ConnectionError
        waiter.set_exception(error(f"the server closed the connection {what}" + (f" ({exc})" if exc else "")))

    # ------------------------------------------------------------------ one exchange

    def send(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        self._waiter = waiter
        self._buffer.clear()
        self._received_any = False
        self._head, self._length, self._chunked, self._chunks, self._scan = None, None, False, [], 0
        assert self.transport is not None
        self.transport.write(data)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.abort()

    def _finish(self, body: bytes, rest: int) -> None:
        status, headers, keep_alive = self._head  # type: ignore[misc]
        self.keep_alive = keep_alive and rest == 0  # stray bytes after the body: do not reuse
        assert self._waiter is not None
        self._waiter.set_result(Response(status, headers, body))

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > _MAX_HEAD_BYTES:
                    raise ProtocolError(f"the response head is over {_MAX_HEAD_BYTES} bytes")
                return
            status, headers, keep_alive = _parse_head(bytes(buffer[:end]))
            del buffer[:end + 4]
            if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
                self._parse()
                return
            self._head = (status, headers, keep_alive)
            if status in (204, 304):
                self._length = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in headers:
                try:
                    self._length = int(headers["content-length"])
                except ValueError:
                    raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
                if self._length < 0:
                    raise ProtocolError(f"bad Content-Length {self._length}")
            else:
                self._head = (status, headers, False)  # delimited by the close
        if self._length is not None:
            if len(buffer) >= self._length:
                self._finish(bytes(buffer[:self._length]), len(buffer) - self._length)
        elif self._chunked:
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        """Chunks are consumed from ``_scan`` on, so each byte is looked at about once."""
        buffer, at = self._buffer, self._scan
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                break
            size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:40]!r}") from None
            if size == 0:  # the last chunk, then optional trailers and an empty line
                trailers_end = buffer.find(b"\r\n", line_end + 2)
                while trailers_end >= 0 and trailers_end != line_end + 2:
                    line_end = trailers_end
                    trailers_end = buffer.find(b"\r\n", line_end + 2)
                if trailers_end < 0:
                    break
                self._finish(b"".join(self._chunks), len(buffer) - (trailers_end + 2))
                return
            data_end = line_end + 2 + size
            if len(buffer) < data_end + 2:
                break
            if buffer[data_end:data_end + 2] != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")
            self._chunks.append(bytes(buffer[line_end + 2:data_end]))
            at = data_end + 2
        del buffer[:at]
        self._scan = 0


class _StaleConnection(ConnectionError):
    """A reused keep-alive connection died before any byte of the response."""


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"a header line without a colon: {line[:80]!r}")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = ("keep-alive" in connection) if parts[0] == "HTTP/1.0" else ("close" not in connection)
    return int(parts[1]), headers, keep_alive


class Http1Client:
    """POSTs to one URL with pooled keep-alive connections; safe to share between tasks.

    ``headers`` are sent with every request (``Host``, ``Content-Type`` and
    ``Content-Length`` are added).
    """

    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        fixed = [f"POST {target} HTTP/1.1", f"Host: {host_header}", "Accept: application/json",
                 "User-Agent: userrl"]
        fixed += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self._request_head = ("\r\n".join(fixed) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, deque[_Connection]] = (
            weakref.WeakKeyDictionary()
        )
        self._keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]] = (
            weakref.WeakKeyDictionary()
        )
        self.connections_made = 0

    async def post(self, body: bytes, *, timeout: float) -> Response:
        """Send ``body``; the whole response, or an exception (see the module doc)."""
        loop = asyncio.get_running_loop()
        data = b"".join((self._request_head, str(len(body)).encode(), _HEAD_END, body))
        deadline = loop.time() + timeout
        for _ in range(2):  # a second try only after a stale keep-alive connection
            try:
                return await self._exchange(loop, data, deadline)
            except _StaleConnection:
                continue
        raise ConnectionError("the server closed two connections in a row before responding")

    async def _exchange(self, loop: asyncio.AbstractEventLoop, data: bytes, deadline: float) -> Response:
        connection = await self._connection(loop, deadline)
        waiter: asyncio.Future[Response] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            connection.send(data, waiter)
            response = await waiter
        except BaseException:  # timeout, cancellation, a broken response: never reuse it
            connection.abort()
            raise
        finally:
            timer.cancel()
        if connection.keep_alive and not connection.closed:
            connection.reused = True
            self._pool(loop).append(connection)
        else:
            connection.abort()
        return response

    async def _connection(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        idle = self._pool(loop)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have timed out
            if not connection.closed:
                return connection
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise asyncio.TimeoutError()
        _, connection = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl), timeout=remaining)
        self.connections_made += 1
        if self._keepers.get(loop) is None:
            keeper = _close_at_loop_shutdown(idle)
            await keeper.__anext__()
            self._keepers[loop] = keeper
        return connection

    def _pool(self, loop: asyncio.AbstractEventLoop) -> deque[_Connection]:
        idle = self._idle.get(loop)
        if idle is None:
            for old in [other for other in self._idle if other.is_closed()]:
                self._idle.pop(old, None)  # the deque refers to transports that refer to their loop
                self._keepers.pop(old, None)
            idle = self._idle[loop] = deque()
        return idle

    def open_connections(self) -> int:
        """Idle connections held open, over every live loop."""
        return sum(1 for idle in self._idle.values() for c in idle if not c.closed)

    async def aclose(self) -> None:
        """Close the current loop's idle connections (those of other loops close with their loop)."""
        loop = asyncio.get_running_loop()
        idle = self._idle.pop(loop, None)
        self._keepers.pop(loop, None)
        while idle:
            idle.pop().abort()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


async def _close_at_loop_shutdown(idle: deque[_Connection]) -> AsyncIterator[None]:
    """Suspended until the loop finalises it (``asyncio.run`` does at exit), then closes the
    loop's idle connections while the loop still runs."""
    try:
        yield
    finally:
        while idle:
            idle.pop().abort()
