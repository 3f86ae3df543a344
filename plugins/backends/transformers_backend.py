"""Rollout with Hugging Face ``generate``: batched, left-padded, on the training model itself.

Each :meth:`TransformersRollout.generate` call continues one or many episodes by one turn.
``generate`` runs one call at a time, so requests go through a
:class:`~userrl_core.rollout.batcher.GenerationBatcher`: in async mode, where every episode sends
its own request, those that arrive within ``rollout.batch_window_ms`` of each other (or while a
call runs) share one ``generate`` call of at most ``rollout.generation_batch_size`` sequences.
The prompts are left-padded into one batch (or several of ``rollout.generation_batch_size``,
grouped by length to waste less padding) and handed to ``model.generate`` in a worker thread,
so the event loop keeps serving the simulator calls of other episodes meanwhile. Sampling
stops per sequence at the first stop id (kept in the result) or at ``max_new_tokens``; the
sampling log-probs come from ``compute_transition_scores`` (the distribution after temperature
and top-p, i.e. the one the tokens were drawn from).

With a training backend (``trainer=``), rollout and training share one model object, so
:meth:`sync_weights` has nothing to copy. Without one (evaluation) the rollout loads its own
model from ``model.path``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import torch

from userrl_core.rollout.batcher import GenerationBatcher
from userrl_core.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class TransformersRollout:
    """A :class:`~userrl_core.types.RolloutBackend` around one HF causal LM."""

    def __init__(self, *, model: torch.nn.Module, tokenizer: Any, generation_batch_size: int | None = None,
                 compute_dtype: torch.dtype | None = None, batch_window_s: float = 0.0) -> None:
        self.model = model
        # a training policy's fp32 master weights generate under its bf16 autocast
        self.compute_dtype = compute_dtype
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size
        self.device = next(model.parameters()).device
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        # torch modules are not safe to drive from two threads at once
        self._lock = threading.Lock()
        self.batcher = GenerationBatcher(self._generate_in_thread, window_s=batch_window_s,
                                         max_prompts=generation_batch_size)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self.batcher.generate(request)

    async def _generate_in_thread(self, request: GenerationRequest) -> GenerationResult:
        return await asyncio.to_thread(self.generate_blocking, request)

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """The synchronous body of :meth:`generate` (one call at a time per model)."""
        if not request.prompts:
            return GenerationResult(token_ids=[], logprobs=[] if request.return_logprobs else None)
        if any(len(p) == 0 for p in request.prompts):
            raise ValueError("generate: every prompt needs at least one token")
        stop_ids = list(request.stop_token_ids) or _eos_ids(self.tokenizer)
        order = sorted(range(len(request.prompts)), key=lambda i: len(request.prompts[i]))
        size = self.generation_batch_size or len(order)
        token_ids: list[list[int] | None] = [None] * len(order)
        logprobs: list[list[float] | None] = [None] * len(order)
        with self._lock, _seeded(request.seed, self.device):
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                ids, lps = self._generate_chunk([request.prompts[i] for i in chunk], request, stop_ids)
                for slot, i in enumerate(chunk):
                    token_ids[i] = ids[slot]
                    logprobs[i] = lps[slot] if lps is not None else None
        return GenerationResult(
            token_ids=[list(t or []) for t in token_ids],
            logprobs=[list(lp or []) for lp in logprobs] if request.return_logprobs else None,
        )

    def _generate_chunk(
        self, prompts: list[list[int]], request: GenerationRequest, stop_ids: list[int]
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        input_ids, attention_mask = left_pad(prompts, self.pad_token_id, self.device)
        greedy = not request.do_sample or request.temperature == 0
        sampling = {} if greedy else {"temperature": request.temperature, "top_p": request.top_p, "top_k": 0}
        from userrl_plugins.backends.torch_policy import compute_autocast

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), compute_autocast(self.device, self.compute_dtype):
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=request.max_new_tokens,
                    do_sample=not greedy,
                    eos_token_id=stop_ids,
                    pad_token_id=self.pad_token_id,
                    return_dict_in_generate=True,
                    output_scores=request.return_logprobs,
                    use_cache=True,
                    **sampling,
                )
        finally:
            self.model.train(was_training)
        new_tokens = out.sequences[:, input_ids.shape[1]:]
        scores = None
        if request.return_logprobs:
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        stop = set(stop_ids)
        ids_out: list[list[int]] = []
        lps_out: list[list[float]] | None = [] if scores is not None else None
        for row in range(new_tokens.shape[0]):
            ids = truncate_after_stop(new_tokens[row].tolist(), stop)
            ids_out.append(ids)
            if lps_out is not None:
                lps_out.append(scores[row, : len(ids)].float().cpu().tolist())
        return ids_out, lps_out

    def close(self) -> None:
        """Nothing to release: the model is the training backend's (or garbage-collected)."""

    def sync_weights(self, source: Any) -> None:
        """Make the rollout sample from ``source``'s current weights (a no-op when shared)."""
        source_model = getattr(source, "model", None)
        if source_model is None or source_model is self.model:
            return
        with self._lock, torch.no_grad():
            self.model.load_state_dict(source_model.state_dict())


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a batch of token id lists."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def truncate_after_stop(ids: list[int], stop: set[int]) -> list[int]:
    """``ids`` up to and including the first stop id (all of them when none occurs)."""
    for position, token in enumerate(ids):
        if token in stop:
            return ids[: position + 1]
    return ids


def _eos_ids(tokenizer: Any) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ValueError("generate: no stop_token_ids given and the tokenizer has no eos token")
    return [int(tokenizer.eos_token_id)]


class _seeded:
    """Seed torch's RNG for one call and put the previous state back afterwards."""

    def __init__(self, seed: int | None, device: torch.device) -> None:
        self.seed = seed
        self.devices = [device.index or 0] if device.type == "cuda" else []
        self._fork = None

    def __enter__(self) -> None:
        if self.seed is None:
            return
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        if self._fork is not None:
            self._fork.__exit__(*exc)
            self._fork = None
