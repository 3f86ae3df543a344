"""Dynamic batching of generate requests for backends that run one ``generate`` call at a time.

In async mode the rollout engine sends one request per episode as soon as that episode is ready
for its next turn. A continuous-batching server (SGLang) takes them one by one; a plain
Hugging Face ``generate`` does not, and running 64 one-prompt calls costs far more than one
64-prompt call on a CPU or a single GPU. :class:`GenerationBatcher` sits in front of such a
backend and merges the requests that arrive close together:

* when the backend is idle, the first request waits at most ``window_s`` for others to join it,
  or less if ``max_prompts`` sequences are already waiting;
* while a merged call runs, new requests queue; when it returns, what queued is sent at once
  (it has waited already), again up to ``max_prompts`` sequences;
* only requests with the same sampling settings (length cap, temperature, top-p, stop ids,
  log-probs) share a call; the merged call uses the first request's seed.

A request with many prompts (the ``sync`` mode's batch) is never split here: it goes as one call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from userrl_core.types import GenerationRequest, GenerationResult

Generate = Callable[[GenerationRequest], Awaitable[GenerationResult]]


def sampling_key(request: GenerationRequest) -> tuple[Any, ...]:
    """What two requests must share to be sampled in one call."""
    return (request.max_new_tokens, request.temperature, request.top_p, request.do_sample,
            tuple(request.stop_token_ids), request.return_logprobs)


@dataclass
class _Waiting:
    request: GenerationRequest
    future: asyncio.Future


@dataclass
class BatcherStats:
    """Counters since the batcher was made: requests in, backend calls out, sequences sent."""

    requests: int = 0
    calls: int = 0
    sequences: int = 0
    largest_call: int = 0


class GenerationBatcher:
    """Merges concurrent generate requests into single backend calls (see the module doc)."""

    def __init__(self, generate: Generate, *, window_s: float, max_prompts: int | None) -> None:
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self._generate = generate
        self.window_s = window_s
        self.max_prompts = max_prompts
        self.stats = BatcherStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._queue: list[_Waiting] = []
        self._queued_prompts = 0
        self._running: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (asyncio.run per rollout): nothing carries over
            self._loop = loop
            self._reset_state()
        future = loop.create_future()
        self._queue.append(_Waiting(request, future))
        self._queued_prompts += len(request.prompts)
        self.stats.requests += 1
        if self._running is None:
            if self.window_s == 0 or self._full():
                self._dispatch()
            elif self._timer is None:
                self._timer = loop.call_later(self.window_s, self._window_closed)
        return await future

    def _full(self) -> bool:
        return self.max_prompts is not None and self._queued_prompts >= self.max_prompts

    def _window_closed(self) -> None:
        self._timer = None
        if self._running is None:
            self._dispatch()

    def _dispatch(self) -> None:
        """Send the first waiting request and every later one that fits with it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue = [w for w in self._queue if not w.future.done()]  # cancelled while waiting
        self._queued_prompts = sum(len(w.request.prompts) for w in self._queue)
        if not self._queue:
            return
        first = self._queue[0]
        key = sampling_key(first.request)
        taken, kept, size = [first], [], len(first.request.prompts)
        for waiting in self._queue[1:]:
            n = len(waiting.request.prompts)
            fits = self.max_prompts is None or size + n <= self.max_prompts
            if fits and sampling_key(waiting.request) == key:
                taken.append(waiting)
                size += n
            else:
                kept.append(waiting)
        self._queue = kept
        self._queued_prompts -= size
        self._running = asyncio.ensure_future(self._call(taken, size))

    async def _call(self, taken: list[_Waiting], size: int) -> None:
        self.stats.calls += 1
        self.stats.sequences += size
        self.stats.largest_call = max(self.stats.largest_call, size)
        first = taken[0].request
        if len(taken) == 1:
            merged = first
        else:
            merged = GenerationRequest(
                prompts=[p for w in taken for p in w.request.prompts],
                max_new_tokens=first.max_new_tokens, temperature=first.temperature, top_p=first.top_p,
                do_sample=first.do_sample, stop_token_ids=first.stop_token_ids, seed=first.seed,
                return_logprobs=first.return_logprobs,
            )
        try:
            result = await self._generate(merged)
        except BaseException as exc:  # noqa: BLE001  every waiter gets the backend's error
            for waiting in taken:
                if not waiting.future.done():
                    waiting.future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
        else:
            start = 0
            for waiting in taken:
                n = len(waiting.request.prompts)
                part = GenerationResult(
                    token_ids=result.token_ids[start:start + n],
                    logprobs=result.logprobs[start:start + n] if result.logprobs is not None else None,
                )
                start += n
                if not waiting.future.done():
                    waiting.future.set_result(part)
        finally:
            self._running = None
            if self._queue:
                self._dispatch()
