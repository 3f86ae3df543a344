"""A test double of ``sglang.Engine`` that keeps the real engine's contract, for CPU tests.

SGLang needs CUDA, so the ``sglang`` rollout backend is tested against this double. It stands for
the offline engine of sgl-project/sglang (read at commit 001067ff of
``python/sglang/srt/entrypoints/engine.py``); each behaviour below names the upstream file it
comes from. Where the real engine would crash its scheduler process (an assertion or a
``KeyError`` raised there), the double raises the same exception in the caller and refuses every
later call, as a dead engine would.

- ``__init__`` takes ``ServerArgs`` keywords only (``server_args.py`` is a dataclass: an unknown
  keyword is a ``TypeError``) and picks its loop like the real one: the running loop if there
  is one, else a new loop set as the thread's current loop (``engine.py``, end of ``__init__``).
- The control methods (``release_memory_occupation``, ``resume_memory_occupation``,
  ``update_weights_from_tensor``, ``flush_cache``) are sync wrappers that call
  ``self.loop.run_until_complete`` on a tokenizer-manager coroutine, as in ``engine.py``; inside
  a running event loop they therefore raise ``RuntimeError``.
- Memory tags (``python/sglang/srt/constants.py``): ``kv_cache``, ``weights``,
  ``weights_drafter``, ``cuda_graph``; no tags means all four. Releasing asserts that no request
  is in flight; resuming a tag that is not released raises ``KeyError`` (``offload_tags.remove``),
  both in ``managers/scheduler_update_weights_mixin.py``.
- ``update_weights_from_tensor`` returns ``(success, message)`` (``tokenizer_communicator_mixin.py``
  merges the data-parallel replies with `` | ``). Names go through the model's ``load_weights``
  (``models/qwen3.py``, ``models/llama.py``): a name of a stacked projection (``q_proj``,
  ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj``) that the model lacks is a ``KeyError``
  (``params_dict[name]``); any other unknown name is skipped with a logged warning and the call
  still answers ``(True, "Success")``; a tensor of the wrong shape fails the size assertion of
  ``default_weight_loader``. ``fail_next_push`` makes the next call answer ``(False, message)``,
  as the scheduler does when a load is refused (``scheduler_update_weights_mixin.py`` logs the
  message and returns it).
- ``async_generate`` validates the sampling parameters as ``sampling/sampling_params.py`` does
  (unknown keys are a ``TypeError``; ``verify`` ranges), refuses prompts that do not fit the
  context length with the tokenizer manager's messages, stops at EOS / ``stop_token_ids``
  (unless ``ignore_eos``) or at ``max_new_tokens``, and answers the real dict shape: ``text``,
  ``output_ids``, ``meta_info`` with ``id``, ``finish_reason`` (``{"type": "stop", "matched":
  id}`` or ``{"type": "length", "length": n}``), ``prompt_tokens``, ``completion_tokens``,
  ``cached_tokens`` and, with ``return_logprob``, ``output_token_logprobs`` as ``(logprob,
  token_id, None)``.
- ``shutdown`` kills every child process of the calling process and not the process itself
  (``kill_process_tree(os.getpid(), include_parent=False)`` in ``engine.py``). The double starts
  one child (standing for the scheduler) with ``multiprocessing`` as SGLang does, so it cannot
  start inside a daemonic process either.

Tokens are not a language model's: each sampled id is a deterministic function of the prompt,
the ids so far, the sampling seed and the weight version, and its log-prob is a fixed function
of the id. ``reply_ids`` scripts the replies instead (then EOS).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# python/sglang/srt/constants.py
GPU_MEMORY_ALL_TYPES = ["kv_cache", "weights", "weights_drafter", "cuda_graph"]

# The ServerArgs fields the double accepts (python/sglang/srt/server_args.py; the real class has
# many more, all optional).
SERVER_ARGS = {
    "model_path", "tokenizer_path", "dtype", "mem_fraction_static", "tp_size", "enable_memory_saver",
    "random_seed", "trust_remote_code", "base_gpu_id", "gpu_id_step", "port", "context_length",
    "log_level", "skip_tokenizer_init", "load_format", "nnodes", "node_rank", "dist_init_addr",
    "max_running_requests", "disable_cuda_graph",
}

# python/sglang/srt/sampling/sampling_params.py: the API fields of SamplingParams.
SAMPLING_FIELDS = {
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema",
    "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
    "no_stop_trim", "custom_params", "stream_interval", "logit_bias", "sampling_seed",
}

STACKED_SHARDS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def verify_sampling_params(params: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """``SamplingParams(**params)`` then ``verify(vocab_size)``: the checks and messages of
    ``sampling/sampling_params.py``. Returns the normalised values the double samples with."""
    unknown = sorted(set(params) - SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"Unexpected keyword argument(s) for SamplingParams: {unknown}")
    p = {"max_new_tokens": 128, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
         "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0, "min_new_tokens": 0,
         "ignore_eos": False, "sampling_seed": None, "stop_token_ids": None, "logit_bias": None}
    p.update({k: v for k, v in params.items() if v is not None})
    if 0 <= p["temperature"] < 1e-6:  # greedy is top_k = 1
        p["temperature"], p["top_k"] = 1.0, 1
    if p["top_k"] == -1:
        p["top_k"] = 1 << 30
    if not math.isfinite(p["temperature"]) or p["temperature"] < 0.0:
        raise ValueError(f"temperature must be a non-negative finite number, got {p['temperature']}.")
    if not 0.0 < p["top_p"] <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p['top_p']}.")
    if not 0.0 <= p["min_p"] <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {p['min_p']}.")
    if p["top_k"] < 1:
        raise ValueError(f"top_k must be -1 (disable) or at least 1, got {p['top_k']}.")
    if not 0.0 < p["repetition_penalty"] <= 2.0:
        raise ValueError(f"repetition_penalty must be in (0, 2] (1.0 = no penalty), got {p['repetition_penalty']}.")
    if p["max_new_tokens"] < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {p['max_new_tokens']}.")
    if not 0 <= p["min_new_tokens"] <= p["max_new_tokens"]:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens({p['max_new_tokens']})], "
                         f"got {p['min_new_tokens']}.")
    for token_id in p["logit_bias"] or {}:
        if not 0 <= int(token_id) < vocab_size:
            raise ValueError(f"logit_bias must has keys in [0, {vocab_size - 1}], got {token_id}.")
    p["stop_token_ids"] = {int(t) for t in p["stop_token_ids"] or []}
    return p


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes in the model folder's safetensors files: the names ``load_weights``
    receives when the engine loads the checkpoint."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    if not shapes:
        raise FileNotFoundError(f"no *.safetensors in {model_path}")
    return shapes


@dataclass
class _Request:
    """The request objects of ``managers/io_struct.py`` the double's tokenizer manager takes."""

    tags: list[str] | None = None
    named_tensors: list[tuple[str, Any]] = field(default_factory=list)
    load_format: str | None = None
    flush_cache: bool = True


class _TokenizerManager:
    """The coroutines the engine's sync wrappers run (``managers/tokenizer_communicator_mixin.py``);
    their bodies do what the scheduler does (``managers/scheduler_update_weights_mixin.py``)."""

    def __init__(self, engine: "SGLangEngineDouble") -> None:
        self.engine = engine

    async def release_memory_occupation(self, obj: _Request, request: Any = None) -> None:
        e = self.engine
        e._alive()
        await asyncio.sleep(0)
        if e.in_flight:
            e._die()
            raise AssertionError("release_memory_occupation should be called only when no ongoing request.")
        tags = obj.tags or GPU_MEMORY_ALL_TYPES
        e.offload_tags.update(tags)
        if "kv_cache" in tags:
            e.cache_flushes += 1
        e.calls.append(("release_memory_occupation", list(tags)))

    async def resume_memory_occupation(self, obj: _Request, request: Any = None) -> None:
        e = self.engine
        e._alive()
        await asyncio.sleep(0)
        tags = obj.tags or GPU_MEMORY_ALL_TYPES
        for tag in tags:
            if tag not in e.offload_tags:
                e._die()
                raise KeyError(tag)  # set.remove of a tag never released
            e.offload_tags.remove(tag)
        e.calls.append(("resume_memory_occupation", list(tags)))

    async def update_weights_from_tensor(self, obj: _Request, request: Any = None) -> tuple[bool, str]:
        e = self.engine
        e._alive()
        await asyncio.sleep(0)
        if "weights" in e.offload_tags:
            e._die()
            raise RuntimeError("update_weights_from_tensor while the weight memory is released (paused by "
                               "torch_memory_saver): the copy would write to unmapped memory")
        e.calls.append(("update_weights_from_tensor", {"names": [n for n, _ in obj.named_tensors],
                                                       "flush_cache": obj.flush_cache}))
        if e.fail_next_push is not None:
            message, e.fail_next_push = e.fail_next_push, None
            log.error(message)
            return False, message
        for name, tensor in obj.named_tensors:
            if e.tie_word_embeddings and name == "lm_head.weight":
                continue
            if name not in e.shapes:
                if any(shard in name for shard in STACKED_SHARDS):
                    e._die()
                    raise KeyError(name)
                log.warning("Parameter %s not found in params_dict", name)
                e.skipped.append(name)
                continue
            if tuple(tensor.shape) != e.shapes[name]:
                e._die()
                raise AssertionError(f"Attempted to load weight ({tuple(tensor.shape)}) into parameter "
                                     f"({e.shapes[name]})")
            e.loaded[name] = float(tensor.double().sum())
        e.weight_version += 1
        if obj.flush_cache:
            e.cache_flushes += 1
        return True, "Success"

    async def flush_cache(self) -> Any:
        e = self.engine
        e._alive()
        await asyncio.sleep(0)
        e.calls.append(("flush_cache", None))
        success = not e.in_flight  # the scheduler refuses to flush while requests run
        if success:
            e.cache_flushes += 1
        return type("FlushCacheReqOutput", (), {"success": success})()


class SGLangEngineDouble:
    """Stands in for ``sglang.Engine``; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - SERVER_ARGS)
        if unknown:
            raise TypeError(f"ServerArgs.__init__() got unexpected keyword argument(s) {unknown}")
        if "model_path" not in kwargs:
            raise TypeError("ServerArgs.__init__() missing 1 required positional argument: 'model_path'")
        self.server_args = dict(kwargs)
        model_path = kwargs["model_path"]
        config = json.loads((Path(model_path) / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        eos = config.get("eos_token_id")
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.context_len = int(kwargs.get("context_length") or config.get("max_position_embeddings", 4096))
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
        self.shapes = checkpoint_shapes(model_path)
        self.reply_ids: list[int] | None = None
        self.fail_next_push: str | None = None
        self.offload_tags: set[str] = set()
        self.in_flight = 0
        self.calls: list[tuple[str, Any]] = []
        self.loaded: dict[str, float] = {}
        self.skipped: list[str] = []
        self.weight_version = 0
        self.cache_flushes = 0
        self.dead: str | None = None
        self.requests = 0
        self.tokenizer_manager = _TokenizerManager(self)
        # The scheduler stand-in: a child process that shutdown() must kill, started like SGLang's
        # scheduler (multiprocessing, spawn), so a daemonic host process cannot start it either.
        self.child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(3600,),
                                                                  name="sglang-scheduler-double")
        self.child.start()
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)

    # ------------------------------------------------------------------ sync wrappers (engine.py)

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        return self.loop.run_until_complete(self.tokenizer_manager.release_memory_occupation(_Request(tags=tags)))

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        return self.loop.run_until_complete(self.tokenizer_manager.resume_memory_occupation(_Request(tags=tags)))

    def update_weights_from_tensor(self, named_tensors: list[tuple[str, Any]], load_format: str | None = None,
                                   flush_cache: bool = True) -> tuple[bool, str]:
        obj = _Request(named_tensors=list(named_tensors), load_format=load_format, flush_cache=flush_cache)
        return self.loop.run_until_complete(self.tokenizer_manager.update_weights_from_tensor(obj))

    def flush_cache(self) -> Any:
        return self.loop.run_until_complete(self.tokenizer_manager.flush_cache())

    def shutdown(self) -> None:
        import psutil

        for child in psutil.Process(os.getpid()).children(recursive=True):
            try:
                child.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.child.join(timeout=10)
        self.dead = self.dead or "shut down"

    # ------------------------------------------------------------------ generation

    async def async_generate(self, prompt: Any = None, sampling_params: dict[str, Any] | None = None,
                             input_ids: list[int] | None = None, return_logprob: bool = False,
                             **kwargs: Any) -> dict[str, Any]:
        self._alive()
        if input_ids is None or prompt is not None:
            raise ValueError("the double takes token ids (input_ids) only")
        if self.offload_tags & {"weights", "kv_cache"}:
            raise RuntimeError(f"generation while memory is released: {sorted(self.offload_tags)}")
        params = verify_sampling_params(dict(sampling_params or {}), self.vocab_size)
        n_input = len(input_ids)
        if n_input >= self.context_len:  # managers/tokenizer_manager.py, _validate_one_request
            raise ValueError(f"The input ({n_input} tokens) is longer than the model's context length "
                             f"({self.context_len} tokens).")
        if n_input + params["max_new_tokens"] > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} tokens. "
                f"You requested a total of {n_input + params['max_new_tokens']} tokens: {n_input} tokens from "
                f"the input messages and {params['max_new_tokens']} tokens for the completion. Please reduce "
                "the number of tokens in the input messages or the completion to fit within the limit.")
        self.in_flight += 1
        self.requests += 1
        try:
            out, finish = [], {"type": "length", "length": params["max_new_tokens"]}
            stops = params["stop_token_ids"] | (set() if params["ignore_eos"] else self.eos_token_ids)
            for step in range(params["max_new_tokens"]):
                await asyncio.sleep(0)  # other requests run in between: continuous batching
                token = self._next_token(input_ids, out, params, step)
                out.append(token)
                if token in stops and step + 1 >= params["min_new_tokens"]:
                    finish = {"type": "stop", "matched": token}
                    break
        finally:
            self.in_flight -= 1
        meta: dict[str, Any] = {"id": f"req-{self.requests}", "finish_reason": finish, "prompt_tokens": n_input,
                                "completion_tokens": len(out), "cached_tokens": 0}
        if return_logprob:
            meta["output_token_logprobs"] = [(self._logprob(t), t, None) for t in out]
        return {"text": " ".join(f"<{t}>" for t in out), "output_ids": out, "meta_info": meta}

    def _next_token(self, prompt: list[int], out: list[int], params: dict[str, Any], step: int) -> int:
        if self.reply_ids is not None:
            script = list(self.reply_ids) + sorted(self.eos_token_ids)[:1]
            return script[step] if step < len(script) else script[-1]
        seed = params["sampling_seed"] if params["top_k"] != 1 else 0
        digest = hashlib.blake2b(repr((prompt, out, seed, self.weight_version)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.vocab_size

    def _logprob(self, token: int) -> float:
        return -0.05 - (token % 97) / 100.0

    # ------------------------------------------------------------------ a dead engine

    def _die(self) -> None:
        self.dead = "the scheduler process died (an exception in the scheduler: see the error above)"

    def _alive(self) -> None:
        if self.dead is not None:
            raise RuntimeError(f"SGLang engine is not running: {self.dead}")


# ---------------------------------------------------------------------------- probes for tests
# Module-level (picklable) calls that tests run on an engine inside a rank process.


def engine_state(engine: SGLangEngineDouble) -> dict[str, Any]:
    return {"calls": list(engine.calls), "loaded": dict(engine.loaded), "offload_tags": sorted(engine.offload_tags),
            "requests": engine.requests, "port": engine.server_args.get("port"),
            "base_gpu_id": engine.server_args.get("base_gpu_id"), "pid": os.getpid(),
            "child_alive": engine.child.is_alive(), "dead": engine.dead}


def refuse_next_push(port: int, message: str, engine: SGLangEngineDouble) -> None:
    if engine.server_args.get("port") == port:
        engine.fail_next_push = message
