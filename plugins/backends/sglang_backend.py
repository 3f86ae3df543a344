"""The ``sglang`` rollout backend: one colocated SGLang engine per training rank ("hybrid engine").

Where the engines live (as verl and UserRL's verl fork do it): each FSDP training rank starts its
own ``sglang.Engine`` inside its own process (Ray actor or local rank process), on that rank's GPU
(``base_gpu_id`` = the rank's local device) with its own port (``port = base + 10 * rank``), with
``mem_fraction_static = rollout.gpu_memory_utilization``. The driver routes every request (one
episode's turn) to the engine with the fewest requests in flight, so per-turn batches (sync
rollouts) and single episodes arriving one by one (async rollouts) are both spread over all GPUs.

How an engine is driven (:class:`EngineHost`): SGLang's control methods are sync wrappers that
call ``self.loop.run_until_complete`` on the engine's loop, which raises inside a running event
loop (the trainer runs in ``asyncio.run``). So each engine gets its own thread: the thread runs the
engine's loop for ``async_generate`` requests and, between them, calls the control methods with
that loop stopped, exactly as SGLang's offline API expects.

One training step:

1. rollout: each request is an ``async_generate`` on token ids (SGLang batches continuously);
2. before training (``release_memory``, a ``before_training`` callback of the training backend):
   every engine releases exactly ``["kv_cache", "weights"]`` (no tags would also pause
   ``cuda_graph`` and ``weights_drafter``, which nothing would resume);
3. after the update (``sync_weights``), on every rank: ``torch.cuda.empty_cache()`` (the training
   side's cached blocks go back to the CUDA driver before the engine maps its weights again), resume
   ``weights``, push the weights in buckets of about ``bucket_bytes`` gathered on the rank's GPU
   (``update_weights_from_tensor``; no state dict through the driver), resume ``kv_cache``,
   flush the cache. A push answered ``(False, message)`` stops the run with SGLang's message.

Verified on CPU against ``tests/support/sglang_double.py`` (a double that keeps the real engine's
contract, cited file by file) in 2 gloo ranks. Not verified here: a real SGLang engine on a GPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any, Callable, Iterable, Iterator

from userrl_core.errors import RunStopped
from userrl_core.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 512 * 2**20
RELEASE_TAGS = ("kv_cache", "weights")  # python/sglang/srt/constants.py: the memory types a step frees
ENGINE_PORT_STRIDE = 10  # SGLang takes a few ports above ``port`` (tokenizer, scheduler, nccl)


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


def prompt_seed(seed: int | None, index: int) -> int | None:
    """A distinct sampling seed for each prompt of a request: SGLang's ``sampling_seed`` makes a
    request deterministic, so the ``rollout.n`` copies of one prompt must not share it."""
    return None if seed is None else (seed * 1_000_003 + index) % (2**63 - 1)


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


# ---------------------------------------------------------------------------- rank side


class EngineHost:
    """One engine on its own thread, driven from any other thread.

    The thread creates the engine (so the engine's loop is the thread's own, see the real
    ``Engine.__init__``) and then alternates: it runs the loop while ``async_generate`` requests
    are served, and when a control call arrives it waits for the requests in flight, stops the
    loop and makes the (sync) control call, which runs the loop itself with ``run_until_complete``.
    """

    def __init__(self, factory: Callable[..., Any], **engine_kwargs: Any) -> None:
        self.engine: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.released = False
        self._inbox: asyncio.Queue | None = None
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(factory, engine_kwargs, started),
                                        daemon=True, name="userrl-sglang-engine")
        self._thread.start()
        started.result()  # the engine's own startup error, if any

    def _main(self, factory: Callable[..., Any], kwargs: dict[str, Any], started: concurrent.futures.Future) -> None:
        try:
            self.engine = factory(**kwargs)
            self.loop = self.engine.loop
            self._inbox = asyncio.Queue()
        except BaseException as exc:  # reported to the constructor
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            job = self.loop.run_until_complete(self._serve())
            if job is None:
                return
            call, future = job
            try:
                future.set_result(call(self.engine))
            except BaseException as exc:  # the caller raises it
                future.set_exception(exc)

    async def _serve(self) -> tuple[Callable[[Any], Any], concurrent.futures.Future] | None:
        """Serve generation requests until a control call (returned) or a stop (None) arrives."""
        running: set[asyncio.Task] = set()
        while True:
            kind, payload, future = await self._inbox.get()
            if kind == "generate":
                task = asyncio.ensure_future(self._generate(payload, future))
                running.add(task)
                task.add_done_callback(running.discard)
                continue
            if running:
                await asyncio.wait(set(running))
            return (payload, future) if kind == "control" else None

    async def _generate(self, payload: dict[str, Any], future: concurrent.futures.Future) -> None:
        try:
            future.set_result(await self.engine.async_generate(**payload))
        except BaseException as exc:
            future.set_exception(exc)

    def _submit(self, kind: str, payload: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._inbox.put_nowait, (kind, payload, future))
        return future

    def submit_generate(self, input_ids: list[int], params: dict[str, Any]) -> concurrent.futures.Future:
        """One ``async_generate`` on token ids, with log-probs; the future holds SGLang's output dict."""
        if self.released:
            raise RuntimeError("the SGLang engine's memory is released (training phase); sync_weights first")
        return self._submit("generate", {"input_ids": list(input_ids), "sampling_params": dict(params),
                                         "return_logprob": True})

    def generate(self, input_ids: list[int], params: dict[str, Any]) -> dict[str, Any]:
        return self.submit_generate(input_ids, params).result()

    def control(self, call: Callable[[Any], Any]) -> Any:
        """``call(engine)`` on the engine's thread with its loop stopped; blocks until done."""
        return self._submit("control", call).result()

    def release(self) -> None:
        """Free the KV cache and the weights for training (idempotent)."""
        if not self.released:
            self.control(lambda engine: engine.release_memory_occupation(tags=list(RELEASE_TAGS)))
            self.released = True

    def push_weights(self, buckets: Iterable[list[tuple[str, Any]]],
                     before_resume: Callable[[], None] | None = None) -> tuple[bool, str]:
        """Resume the weights, load every bucket, resume the KV cache, flush the cache.

        Every bucket is drawn from ``buckets`` even after a refused one: drawing one may be a
        collective (an all-gather) that the other ranks take part in. Returns SGLang's
        ``(success, message)``; the first refusal wins."""
        if self.released:
            if before_resume is not None:
                before_resume()
            self.control(lambda engine: engine.resume_memory_occupation(tags=["weights"]))
        result: tuple[bool, str] = (True, "Success")
        for index, bucket in enumerate(buckets):
            if not result[0]:
                continue
            success, message = self.control(
                lambda engine, b=bucket: engine.update_weights_from_tensor(named_tensors=b, flush_cache=False))
            if not success:
                result = (False, f"bucket {index} ({len(bucket)} tensors, first {bucket[0][0]}): {message}")
        if self.released:
            self.control(lambda engine: engine.resume_memory_occupation(tags=["kv_cache"]))
            self.released = False
        self.control(lambda engine: engine.flush_cache())
        return result

    def shutdown(self) -> None:
        """Shut the engine down (SGLang kills its child processes) and end the thread."""
        if self._thread.is_alive():
            try:
                self.control(lambda engine: engine.shutdown())
            finally:
                self._submit("stop", None)
                self._thread.join(timeout=30)


def engine_kwargs(config: Any, model_dir: str, *, rank: int, local_gpu: int, base_port: int) -> dict[str, Any]:
    """``sglang.Engine`` keywords for the engine of one training rank: on the rank's GPU
    (``base_gpu_id``), on its own ports, with memory release enabled."""
    return {
        "model_path": model_dir,
        "mem_fraction_static": config.rollout.gpu_memory_utilization,
        "tp_size": config.rollout.tensor_model_parallel_size,
        "enable_memory_saver": True,
        "base_gpu_id": local_gpu,
        "port": base_port + ENGINE_PORT_STRIDE * rank,
        "random_seed": config.trainer.seed + rank,
        "trust_remote_code": config.model.trust_remote_code,
        "dtype": config.model.dtype,
    }


def checkpoint_names(model_dir: str) -> set[str]:
    """The weight names in a model folder's safetensors files (headers only): the names the
    engine's ``load_weights`` received when it loaded the model."""
    from pathlib import Path

    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            names.update(f.keys())
    if not names:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights for the SGLang engine to load")
    return names


def resolve_factory(path: str) -> Callable[..., Any]:
    """``"module:attribute"`` -> the engine class (``"sglang:Engine"`` on a GPU machine)."""
    import importlib

    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


class RankEngine:
    """The engine of one training rank, inside the rank's process, fed from the rank's policy.

    ``policy.full_weights()`` yields ``(name, tensor)`` gathered on the rank's device one tensor
    at a time (a collective: every rank draws the same sequence).

    Only names of the checkpoint the engine loaded are pushed: SGLang's ``load_weights`` skips
    a name it does not know with a logged warning and still reports success (``models/qwen3.py``,
    ``models/llama.py``), so such a weight would silently stay stale. A name outside the
    checkpoint makes the push fail here, naming it."""

    def __init__(self, policy: Any, spec: dict[str, Any], *, rank: int, local_gpu: int) -> None:
        self.policy = policy
        self.rank = rank
        self.model_dir = spec["model_dir"]
        self.known = checkpoint_names(self.model_dir)
        kwargs = engine_kwargs(spec["config"], self.model_dir, rank=rank, local_gpu=local_gpu,
                               base_port=spec["base_port"])
        self.kwargs = kwargs
        self.host = EngineHost(resolve_factory(spec["factory"]), **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "pid": os.getpid(), "base_gpu_id": self.kwargs["base_gpu_id"],
                "port": self.kwargs["port"]}

    def submit_generate(self, input_ids: list[int], params: dict[str, Any]) -> concurrent.futures.Future:
        return self.host.submit_generate(input_ids, params)

    def release(self) -> None:
        self.host.release()

    def sync_weights(self, bucket_bytes: int) -> tuple[bool, str]:
        unknown: list[str] = []

        def known_only(named: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
            for name, tensor in named:  # every tensor is drawn: drawing is a collective
                if name in self.known:
                    yield name, tensor
                else:
                    unknown.append(name)

        result = self.host.push_weights(weight_buckets(known_only(self.policy.full_weights()), bucket_bytes),
                                        before_resume=_empty_device_cache)
        if unknown:
            return False, (f"{len(unknown)} weight name(s) not in the checkpoint the engine loaded from "
                           f"{self.model_dir} (SGLang would skip them and keep stale weights): {unknown[:5]}")
        return result

    def control(self, call: Callable[[Any], Any]) -> Any:
        """``call(engine)`` on the engine's thread (diagnostics, tests)."""
        return self.host.control(call)

    def shutdown(self) -> None:
        self.host.shutdown()


def _empty_device_cache() -> None:
    """Give the training side's cached CUDA blocks back before the engine maps its memory again."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- driver side


class SGLangRollout:
    """Rollout backend over one engine per training rank; see the module docstring.

    ``ranks`` is the training backend (``submit_engine`` for one rank's engine, ``engines`` for
    all of them at once, ``shutdown_engines``)."""

    def __init__(self, ranks: Any, tokenizer: Any, *, world: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.ranks = ranks
        self.tokenizer = tokenizer
        self.bucket_bytes = bucket_bytes
        self.in_flight = [0] * world
        self.served = [0] * world
        self.released = False
        self.weight_version = 0
        self.placement: list[dict[str, Any]] = []  # where each rank's engine runs (rank, pid, GPU, port)

    def _pick(self) -> int:
        """The engine with the fewest requests in flight (ties: the one that served fewest)."""
        return min(range(len(self.in_flight)), key=lambda r: (self.in_flight[r], self.served[r], r))

    async def _one(self, prompt: list[int], params: dict[str, Any]) -> dict[str, Any]:
        rank = self._pick()
        self.in_flight[rank] += 1
        self.served[rank] += 1
        try:
            return await self.ranks.submit_engine(rank, "generate", list(prompt), params)
        finally:
            self.in_flight[rank] -= 1

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.released:
            raise RuntimeError("the SGLang engines' memory is released (training phase); sync_weights first")
        base = sampling_params(request)
        outputs = await asyncio.gather(*(
            self._one(prompt, {**base, "sampling_seed": prompt_seed(request.seed, i)} if request.seed is not None
                      else base)
            for i, prompt in enumerate(request.prompts)
        ))
        read = [read_output(o) for o in outputs]
        return GenerationResult(token_ids=[ids for ids, _ in read], logprobs=[lp for _, lp in read])

    def release_memory(self) -> None:
        """Free every engine's KV cache and weights for training (idempotent)."""
        if not self.released:
            self.ranks.engines("release")
            self.released = True

    def sync_weights(self, source: Any = None) -> None:
        """Every rank pushes its weights into its engine (gathered on its GPU, in buckets); a
        refused push stops the run with SGLang's message."""
        results = self.ranks.engines("sync_weights", self.bucket_bytes)
        refused = [f"rank {rank}: {message}" for rank, (ok, message) in enumerate(results) if not ok]
        if refused:
            raise RunStopped("SGLang refused the weight update, so the engines would sample from stale weights: "
                             + "; ".join(refused))
        self.released = False
        self.weight_version += 1

    def close(self) -> None:
        """Shut the engines down (the training backend's close does it too, whichever comes first)."""
        self.ranks.shutdown_engines()
