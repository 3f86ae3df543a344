"""An OpenAI-compatible chat-completions server on 127.0.0.1 that answers after a latency.

Latency models: ``fixed`` (every answer after ``--latency`` seconds) and ``lognormal``
(median ``--latency``, shape ``--sigma``), the heavy tail real simulator servers show. A
lognormal latency is drawn by :func:`draw_latency` from the tag ``[s<seed> e<episode> t<turn>]``
that the benchmark's policy stand-in writes into each question, per (episode, turn, call) with
call ``reply`` or ``judge``, so every mode of the engine faces the same draws and the benchmark
can compute the makespan bound from them. A request without a tag gets the median.

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
import math
import random
import re

JUDGE_MARKER = b"You judge clarifying questions"
TAG = re.compile(rb"\[s(\d+) e(\d+) t(\d+)\]")


def draw_latency(seed: int, episode: int, turn: int, call: str, median: float, sigma: float) -> float:
    """The latency of one call: ``median`` when ``sigma`` is 0, else a lognormal draw seeded by
    (seed, episode, turn, call), the same in every process."""
    if sigma == 0:
        return median
    return random.Random(f"{seed}:{episode}:{turn}:{call}").lognormvariate(math.log(median), sigma)


def tag(seed: int, episode: int, turn: int) -> str:
    """The tag a question carries so the server can draw its calls' latencies."""
    return f"[s{seed} e{episode} t{turn}]"
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

    def __init__(self, latency: float, sigma: float) -> None:
        self.latency = latency
        self.sigma = sigma
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
            judge = JUDGE_MARKER in body
            answer = JUDGE_RESPONSE if judge else USER_RESPONSE
            asyncio.get_running_loop().call_later(self._latency(body, "judge" if judge else "reply"), self._send, answer)

    def _latency(self, body: bytes, call: str) -> float:
        if self.sigma == 0:
            return self.latency
        tags = [tuple(int(x) for x in m) for m in TAG.findall(body)]
        if not tags:
            return self.latency
        seed, episode, turn = max(tags, key=lambda t: t[2])  # the prompt also quotes earlier questions
        return draw_latency(seed, episode, turn, call, self.latency, self.sigma)

    def _send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


async def serve(latency: float, sigma: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ChatProtocol(latency, sigma), "127.0.0.1", port, backlog=8192)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before every answer (the median)")
    parser.add_argument("--sigma", type=float, default=0.0, help="lognormal shape; 0: a fixed latency")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.latency, args.sigma, args.port))


if __name__ == "__main__":
    main()
