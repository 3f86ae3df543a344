"""The ``sglang`` rollout backend: a colocated SGLang engine ("hybrid engine").

The engine (``sglang.Engine``) lives in the rollout process on the training GPUs with
``mem_fraction_static = rollout.gpu_memory_utilization``. One training step then goes:

1. rollout: every episode's turn is its own ``async_generate`` call on token ids (no batching
   barrier between episodes: SGLang's scheduler batches continuously);
2. the trainer starts training: ``release_memory()`` (called by the training backend through
   its ``before_training`` callbacks) frees the engine's weights and KV cache
   (``release_memory_occupation``);
3. after the update, ``sync_weights(training)`` resumes the weight memory, pushes the new
   weights in buckets of about ``bucket_bytes`` with ``update_weights_from_tensor`` (no disk
   round trip; the KV cache is flushed with the last bucket only), then resumes the KV cache.

The adapter holds only this logic; everything it asks of SGLang goes through the small surface
used here (``async_generate``, ``release_memory_occupation``, ``resume_memory_occupation``,
``update_weights_from_tensor``, ``shutdown``), which :class:`RecordingSGLangEngine` implements
as a test double. Verified on CPU against that double: request building, stop ids, log-prob
reading, bucket sizes, release/resume ordering. Not verified here: a real SGLang engine on a GPU.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from userrl_core.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 512 * 2**20


def sampling_params(request: GenerationRequest) -> dict[str, Any]:
    """SGLang sampling parameters for one request (greedy when sampling is off)."""
    greedy = not request.do_sample or request.temperature == 0.0
    params: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens,
        "temperature": 0.0 if greedy else request.temperature,
        "top_p": 1.0 if greedy else request.top_p,
        "skip_special_tokens": False,
        "no_stop_trim": True,  # keep the stop token: the trainer needs exactly what was sampled
    }
    if request.stop_token_ids:
        params["stop_token_ids"] = list(request.stop_token_ids)
    if request.seed is not None:
        params["sampling_seed"] = request.seed
    return params


def read_output(output: dict[str, Any]) -> tuple[list[int], list[float]]:
    """Token ids and their log-probs from one ``async_generate`` result.

    ``meta_info.output_token_logprobs`` is a list of ``(logprob, token_id, text)``; its ids are
    the sampled tokens, so they are used when ``output_ids`` is absent.
    """
    entries = output.get("meta_info", {}).get("output_token_logprobs") or []
    logprobs = [float(e[0]) for e in entries]
    ids = output.get("output_ids")
    if ids is None:
        ids = [int(e[1]) for e in entries]
    if entries and len(entries) != len(ids):
        raise ValueError(f"SGLang returned {len(ids)} output ids but {len(entries)} log-probs")
    return list(ids), logprobs


def weight_buckets(named: Iterable[tuple[str, Any]], bucket_bytes: int) -> Iterator[list[tuple[str, Any]]]:
    """Group tensors in order into buckets of at most ``bucket_bytes`` (a bigger tensor goes
    alone), so a push never holds more than one bucket of extra GPU memory."""
    bucket: list[tuple[str, Any]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


class SGLangRollout:
    """Rollout backend over a colocated SGLang engine; see the module docstring."""

    def __init__(self, engine: Any, tokenizer: Any, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.bucket_bytes = bucket_bytes
        self.released = False
        self.weight_version = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.released:
            raise RuntimeError("the SGLang engine's memory is released (training phase); sync_weights first")
        params = sampling_params(request)
        outputs = await asyncio.gather(*(
            self.engine.async_generate(input_ids=list(prompt), sampling_params=dict(params), return_logprob=True)
            for prompt in request.prompts
        ))
        ids, logprobs = zip(*(read_output(o) for o in outputs)) if outputs else ((), ())
        return GenerationResult(token_ids=[list(i) for i in ids], logprobs=[list(lp) for lp in logprobs])

    def release_memory(self) -> None:
        """Free the engine's weights and KV cache for training (idempotent)."""
        if not self.released:
            self.engine.release_memory_occupation()
            self.released = True

    def sync_weights(self, source: Any) -> None:
        """Push ``source``'s full weights into the engine in buckets, then make it ready to
        generate. ``source`` is the training backend (``full_state_dict()``)."""
        state = source.full_state_dict()
        if self.released:
            self.engine.resume_memory_occupation(tags=["weights"])
        buckets = list(weight_buckets(state.items(), self.bucket_bytes))
        for index, bucket in enumerate(buckets):
            self.engine.update_weights_from_tensor(named_tensors=bucket, flush_cache=index == len(buckets) - 1)
        if self.released:
            self.engine.resume_memory_occupation(tags=["kv_cache"])
            self.released = False
        self.weight_version += 1

    def close(self) -> None:
        self.engine.shutdown()


@dataclass
class RecordingSGLangEngine:
    """A test double of ``sglang.Engine``: records every call in order and answers
    ``async_generate`` with canned token ids (``reply_ids``, plus ``eos_id`` when set) and
    log-prob ``-0.5`` per token. It checks the one rule the real engine enforces that the
    adapter must respect: no generation while memory is released."""

    reply_ids: list[int] = field(default_factory=lambda: [11, 12, 13])
    eos_id: int | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    released: set[str] = field(default_factory=set)

    async def async_generate(self, *, input_ids: list[int], sampling_params: dict[str, Any],
                             return_logprob: bool = False) -> dict[str, Any]:
        if self.released:
            raise RuntimeError(f"generate while released: {sorted(self.released)}")
        self.calls.append(("async_generate", {"input_ids": input_ids, "sampling_params": sampling_params}))
        await asyncio.sleep(0)
        ids = list(self.reply_ids)[: sampling_params["max_new_tokens"]]
        if self.eos_id is not None and len(ids) < sampling_params["max_new_tokens"]:
            ids.append(self.eos_id)
        meta = {"output_token_logprobs": [(-0.5, t, None) for t in ids]} if return_logprob else {}
        return {"output_ids": ids, "meta_info": meta}

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        self.calls.append(("release_memory_occupation", tags))
        self.released |= set(tags or ["weights", "kv_cache"])

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        self.calls.append(("resume_memory_occupation", tags))
        self.released -= set(tags or ["weights", "kv_cache"])

    def update_weights_from_tensor(self, named_tensors: list[tuple[str, Any]], load_format: str | None = None,
                                   flush_cache: bool = True) -> None:
        if "weights" in self.released:
            raise RuntimeError("update_weights_from_tensor while the weight memory is released")
        sizes = [t.numel() * t.element_size() for _, t in named_tensors]
        self.calls.append(("update_weights_from_tensor",
                           {"names": [n for n, _ in named_tensors], "bytes": sum(sizes), "flush_cache": flush_cache}))

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))
