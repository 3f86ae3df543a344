"""The generation batcher: requests that arrive together share one backend call, in order,
within the size cap and only with equal sampling settings; errors reach every waiter."""

from __future__ import annotations

import asyncio

import pytest

from userrl_core.rollout.batcher import GenerationBatcher
from userrl_core.types import GenerationRequest, GenerationResult


class RecordingBackend:
    """A one-call-at-a-time backend double: answers each prompt with [its first id, call index],
    after ``delay`` seconds, and records the prompts of every call."""

    def __init__(self, delay: float = 0.01, fail: bool = False):
        self.delay, self.fail = delay, fail
        self.calls: list[GenerationRequest] = []
        self.running = 0
        self.peak = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls.append(request)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if self.fail:
            raise RuntimeError("out of memory")
        index = len(self.calls) - 1
        ids = [[p[0], index] for p in request.prompts]
        return GenerationResult(ids, [[-0.5, -float(p[0])] for p in request.prompts])


def one(prompt_id: int, **kwargs) -> GenerationRequest:
    return GenerationRequest(prompts=[[prompt_id, 99]], max_new_tokens=kwargs.pop("max_new_tokens", 8),
                             seed=prompt_id, **kwargs)


async def arrive(batcher, requests, gap: float = 0.0):
    async def later(k, request):
        await asyncio.sleep(k * gap)
        return await batcher.generate(request)
    return await asyncio.gather(*(later(k, r) for k, r in enumerate(requests)))


def test_requests_within_the_window_share_one_call_and_get_their_own_rows():
    backend = RecordingBackend()
    batcher = GenerationBatcher(backend.generate, window_s=0.05, max_prompts=None)
    results = asyncio.run(arrive(batcher, [one(k) for k in range(5)], gap=0.002))
    assert len(backend.calls) == 1 and len(backend.calls[0].prompts) == 5
    assert backend.calls[0].seed == 0  # the first request's seed
    assert [r.token_ids for r in results] == [[[k, 0]] for k in range(5)]
    assert [r.logprobs for r in results] == [[[-0.5, -float(k)]] for k in range(5)]
    assert batcher.stats.requests == 5 and batcher.stats.calls == 1 and batcher.stats.largest_call == 5


def test_the_size_cap_dispatches_at_once_and_splits_the_rest():
    backend = RecordingBackend(delay=0.02)
    batcher = GenerationBatcher(backend.generate, window_s=10.0, max_prompts=3)  # the window never closes first
    results = asyncio.run(asyncio.wait_for(arrive(batcher, [one(k) for k in range(7)]), timeout=5))
    assert [len(c.prompts) for c in backend.calls] == [3, 3, 1]
    assert backend.peak == 1  # one call at a time
    assert [r.token_ids[0][0] for r in results] == list(range(7))


def test_requests_queued_during_a_call_go_together_right_after_it():
    backend = RecordingBackend(delay=0.1)
    batcher = GenerationBatcher(backend.generate, window_s=0.0, max_prompts=None)

    async def main():
        first = asyncio.ensure_future(batcher.generate(one(0)))
        await asyncio.sleep(0.02)  # the first call is running now
        rest = await asyncio.gather(*(batcher.generate(one(k)) for k in range(1, 4)))
        return [await first, *rest]

    results = asyncio.run(main())
    assert [len(c.prompts) for c in backend.calls] == [1, 3]
    assert [r.token_ids for r in results] == [[[0, 0]], [[1, 1]], [[2, 1]], [[3, 1]]]


def test_different_sampling_settings_never_share_a_call():
    backend = RecordingBackend()
    batcher = GenerationBatcher(backend.generate, window_s=0.05, max_prompts=None)
    requests = [one(0), one(1, temperature=0.0, do_sample=False), one(2), one(3, max_new_tokens=4)]
    asyncio.run(arrive(batcher, requests))
    assert sorted(tuple(p[0] for p in c.prompts) for c in backend.calls) == [(0, 2), (1,), (3,)]


def test_a_backend_error_reaches_every_waiter_and_the_batcher_recovers():
    backend = RecordingBackend(fail=True)
    batcher = GenerationBatcher(backend.generate, window_s=0.01, max_prompts=None)

    async def main():
        return await asyncio.gather(*(batcher.generate(one(k)) for k in range(3)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "out of memory" in str(o) for o in outcomes)
    backend.fail = False
    (result,) = asyncio.run(arrive(batcher, [one(5)]))  # a new event loop, a clean batcher
    assert result.token_ids == [[5, 1]]


def test_a_multi_prompt_request_is_sent_whole():
    backend = RecordingBackend()
    batcher = GenerationBatcher(backend.generate, window_s=0.01, max_prompts=2)
    request = GenerationRequest(prompts=[[k] for k in range(5)], max_new_tokens=8)
    result = asyncio.run(batcher.generate(request))
    assert [len(c.prompts) for c in backend.calls] == [5]
    assert [ids[0] for ids in result.token_ids] == list(range(5))


def test_negative_window_is_rejected():
    with pytest.raises(ValueError, match="window_s"):
        GenerationBatcher(RecordingBackend().generate, window_s=-1.0, max_prompts=None)
