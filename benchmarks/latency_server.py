"""An OpenAI-compatible chat-completions server on 127.0.0.1 that answers after a fixed latency.

It stands in for a simulator LLM whose only cost is time: run as its own process
(``python -m benchmarks.latency_server --latency 1.0``) so its CPU work never shares the
benchmarked process's event loop or GIL, and written as a bare asyncio protocol (HTTP/1.1 with
keep-alive, no framework) so that answering thousands of requests per second costs it little
CPU on a small machine. It prints ``PORT <n>`` once it listens.

IntentionGym judge prompts get a verdict that covers nothing, in UserRL's format (IntentionGym's
default ``judge_format``), so every episode runs its full number of turns; every other prompt
gets a fixed user reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json

JUDGE_MARKER = b"You judge clarifying questions"
USER_REPLY = "I would like it to be ready in May, please."
JUDGE_REPLY = json.dumps({"analysis": "bench", "is_task_related": True, "covered_detail_indices": []})


def _response(text: str) -> bytes:
    body = json.dumps({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
    }).encode()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n").encode()
    return head + body


USER_RESPONSE = _response(USER_REPLY)
JUDGE_RESPONSE = _response(JUDGE_REPLY)


class ChatProtocol(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests on one connection; answers each after ``latency``."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            answer = JUDGE_RESPONSE if JUDGE_MARKER in body else USER_RESPONSE
            asyncio.get_running_loop().call_later(self.latency, self._send, answer)

    def _send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


async def serve(latency: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ChatProtocol(latency), "127.0.0.1", port, backlog=8192)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before every answer")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.latency, args.port))


if __name__ == "__main__":
    main()
