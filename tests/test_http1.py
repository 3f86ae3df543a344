"""The simulator's HTTP/1.1 client against a raw loopback server that answers byte for byte as
scripted: every framing a server may use (Content-Length, chunked with extensions and trailers,
a body ended by the close, an interim 100), keep-alive reuse, a server that drops idle
connections, truncated and malformed responses, and the timeout; on asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from userrl_core.event_loop import loop_factory
from userrl_plugins.simulators.http1 import Http1Client, ProtocolError

LOOPS = ["asyncio"] + (["uvloop"] if loop_factory() is not None else [])


def run(coroutine, loop_name):
    with asyncio.Runner(loop_factory=loop_factory() if loop_name == "uvloop" else None) as runner:
        return runner.run(coroutine)


class ScriptedServer:
    """Reads each request (head and Content-Length body), records it, and answers with the next
    scripted action: ``bytes`` to write, a list of ``bytes`` written one after another with a
    pause, ``"close"`` (close the connection without answering) or ``"silent"`` (answer nothing)."""

    def __init__(self, *actions):
        self.actions = list(actions)
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append((head, await reader.readexactly(length)))
                action = self.actions.pop(0)
                if action == "close":
                    break
                if action == "silent":
                    await asyncio.sleep(30)
                    break
                for piece in action if isinstance(action, list) else [action]:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)
                if b"Connection: close" in (action if isinstance(action, bytes) else b"".join(action)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes, *extra: str) -> bytes:
    head = "\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra])
    return head.encode() + b"\r\n\r\n" + body


BODY = json.dumps({"choices": [{"message": {"content": "Paris"}}]}).encode()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_content_length_and_keep_alive(loop_name):
    async def go():
        async with ScriptedServer(ok(BODY), ok(BODY), ok(b"{}")) as server:
            client = Http1Client(server.url, headers={"Content-Type": "application/json", "Authorization": "Bearer k"})
            answers = [await client.post(b'{"a": 1}', timeout=5) for _ in range(3)]
            await client.aclose()
            return server, client, answers

    server, client, answers = run(go(), loop_name)
    assert [a.status for a in answers] == [200, 200, 200]
    assert answers[0].body == BODY and answers[2].body == b"{}"
    assert answers[0].headers["content-type"] == "application/json"
    assert server.connections == 1 and client.connections_made == 1  # one connection, reused
    head, body = server.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"Host: 127.0.0.1:" in head
    assert b"Authorization: Bearer k" in head and body == b'{"a": 1}'


@pytest.mark.parametrize("loop_name", LOOPS)
def test_chunked_body_split_into_tiny_writes(loop_name):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Twice: a\r\nX-Twice: b\r\n\r\n"
               b"5;ext=1\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n")
    pieces = [chunked[i:i + 3] for i in range(0, len(chunked), 3)]

    async def go():
        async with ScriptedServer(pieces, ok(BODY)) as server:
            client = Http1Client(server.url)
            first = await client.post(b"{}", timeout=5)
            second = await client.post(b"{}", timeout=5)
            return server, first, second

    server, first, second = run(go(), loop_name)
    assert first.body == b'{"a": 1}' and first.headers["x-twice"] == "a, b"
    assert second.body == BODY and server.connections == 1  # the chunked response left it reusable


@pytest.mark.parametrize("loop_name", LOOPS)
def test_body_delimited_by_close_and_interim_100(loop_name):
    async def go():
        async with ScriptedServer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY,
            ok(b"{}"),
        ) as server:
            client = Http1Client(server.url)
            first = await client.post(b"{}", timeout=5)
            second = await client.post(b"{}", timeout=5)
            return server, first, second

    server, first, second = run(go(), loop_name)
    assert first.status == 200 and first.body == BODY
    assert second.body == b"{}" and server.connections == 2  # a closed connection is not reused


@pytest.mark.parametrize("loop_name", LOOPS)
def test_idle_connection_dropped_by_the_server_is_replaced(loop_name):
    async def go():
        # the server answers keep-alive, then closes the connection at the next request without
        # a byte (what an idle timeout looks like from the client): the client sends again
        async with ScriptedServer(ok(BODY), "close", ok(b"{}")) as server:
            client = Http1Client(server.url)
            first = await client.post(b"{}", timeout=5)
            second = await client.post(b"{}", timeout=5)
            return server, first, second

    server, first, second = run(go(), loop_name)
    assert first.body == BODY and second.body == b"{}"
    assert server.connections == 2 and len(server.requests) == 3


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("answer,error", [
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"trunc"], ConnectionError),
    (b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n", ProtocolError),
], ids=["truncated", "not-http", "bad-chunk", "bad-length"])
def test_broken_responses_raise_and_are_not_reused(loop_name, answer, error):
    async def go():
        async with ScriptedServer(answer, ok(BODY)) as server:
            client = Http1Client(server.url)
            with pytest.raises(error):
                await client.post(b"{}", timeout=5)
            after = await client.post(b"{}", timeout=5)
            return server, after

    server, after = run(go(), loop_name)
    assert after.body == BODY and server.connections == 2


@pytest.mark.parametrize("loop_name", LOOPS)
def test_fresh_connection_closed_before_answering_is_an_error_not_a_resend(loop_name):
    async def go():
        async with ScriptedServer("close", ok(BODY)) as server:
            client = Http1Client(server.url)
            with pytest.raises(ConnectionError, match="before responding"):
                await client.post(b"{}", timeout=5)
            return server

    server = run(go(), loop_name)
    assert len(server.requests) == 1  # a POST is sent again only on a reused, stale connection


@pytest.mark.parametrize("loop_name", LOOPS)
def test_timeout_bounds_the_whole_exchange(loop_name):
    async def go():
        async with ScriptedServer("silent", ok(BODY)) as server:
            client = Http1Client(server.url)
            started = time.perf_counter()
            with pytest.raises(asyncio.TimeoutError):
                await client.post(b"{}", timeout=0.3)
            waited = time.perf_counter() - started
            after = await client.post(b"{}", timeout=5)
            return server, waited, after

    server, waited, after = run(go(), loop_name)
    assert 0.25 <= waited < 2.0
    assert after.body == BODY and server.connections == 2  # the timed-out connection was dropped


def test_refused_connection_is_a_connection_error():
    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionError):
            await Http1Client(f"http://127.0.0.1:{port}/v1/chat/completions").post(b"{}", timeout=2)

    asyncio.run(go())


@pytest.mark.parametrize("url", ["ftp://host/x", "http:///nohost", "localhost:8000/v1"])
def test_non_http_urls_are_refused(url):
    with pytest.raises(ValueError, match="http"):
        Http1Client(url)
