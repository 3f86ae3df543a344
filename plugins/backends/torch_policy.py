"""The trainable policy in one process: a causal LM, AdamW and a LambdaLR schedule.

Device-agnostic (CPU or one GPU); the ``transformers`` backend uses it as is and the FSDP
backend reuses its loss code. One training step, as the trainer drives it::

    batch.old_logprobs = policy.compute_logprobs(batch)                    # before any update
    batch.ref_logprobs = policy.compute_logprobs(batch, reference=True)    # only with use_kl_loss
    metrics = policy.update(batch)

Precision: the trainable weights are always fp32 (they are AdamW's master weights). A 16-bit
``model.dtype`` is the *compute* dtype: forwards run under ``torch.autocast``. Updating 16-bit
weights directly would lose most small steps: at lr 1e-6 an AdamW step (about ``lr`` per
element) is below bf16's resolution (8 bits of mantissa, a relative step of 2^-8) for any weight
larger than about 3e-4, so the weights would not move. ``float16`` compute is refused (it would
need loss scaling, which this policy does not do); ``bfloat16`` is the 16-bit choice.

``update`` runs ``actor.ppo_epochs`` passes over the batch. Each pass splits it, in order, into
mini-batches of ``actor.ppo_mini_batch_size`` tasks (their ``rollout.n`` episodes each); one
mini-batch is one optimizer step. A mini-batch is processed in micro-batches of
``actor.ppo_micro_batch_size_per_gpu`` episodes whose gradients accumulate. Each micro-batch
loss is divided by the token (``token-mean``) or episode (``seq-mean-*``) count of the whole
mini-batch, so the accumulated gradient equals the gradient of the whole mini-batch's loss:
the micro-batch size changes memory use, not the update.

The loss per token ``t`` is the PPO clipped surrogate on ``ratio = exp(logp - old_logp)``
with the GRPO advantage, minus ``entropy_coeff`` times the entropy, plus ``kl_loss_coef``
times the KL estimate to the frozen reference (``low_var_kl`` by default). Only tokens with
``loss_mask == 1`` (what the policy sampled) count.

Log-prob tensors are aligned with ``input_ids``: ``logprobs[:, t]`` is the log-probability of
token ``t`` given the tokens before it, and ``logprobs[:, 0]`` is 0. The scheduler steps once
per ``update`` call (one training step), as in verl.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch

from userrl_core.algorithms import losses, schedules
from userrl_core.errors import ConfigError, MissingRequirementError
from userrl_core.types import TrainBatch

log = logging.getLogger(__name__)

POLICY_STATE_FILE = "policy_state.pt"
_TOKEN_RATE_METRICS = {"actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_device(setting: str, gpu_ids: list[int] | None = None) -> torch.device:
    """``trainer.device`` (auto | cpu | cuda) to a torch device; ``cuda`` must exist if asked for."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MissingRequirementError("trainer.device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device("cuda", gpu_ids[0] if gpu_ids else 0)


def load_causal_lm(path: str | Path, *, dtype: str, device: torch.device, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model.to(device)


def load_trainable_lm(path: str | Path, *, dtype: str, device: torch.device,
                      trust_remote_code: bool = False) -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model with fp32 master weights on ``device``, and the compute dtype ``model.dtype``
    asks for (``None`` for fp32). ``auto`` takes the checkpoint's dtype as the compute dtype."""
    model = load_causal_lm(path, dtype=dtype, device=torch.device("cpu"), trust_remote_code=trust_remote_code)
    loaded = next(model.parameters()).dtype
    compute = loaded if loaded in (torch.bfloat16, torch.float16) else None
    if compute is not None:
        model = model.float()
    return model.to(device), compute


def compute_autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op for fp32 / ``None``."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_tokenizer(path: str | Path, *, chat_template: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TorchPolicy:
    """A policy model with its optimizer and schedule; see the module docstring."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer: Any,
        actor: Any,
        rollout_n: int,
        total_steps: int | None,
        micro_batch_size: int | None = None,
        temperature: float = 1.0,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        low_precision = sorted({str(p.dtype) for p in model.parameters()
                                if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)})
        if low_precision:
            raise ConfigError(
                f"the policy's trainable weights are {', '.join(low_precision)}: AdamW steps at a small lr fall "
                "below 16-bit resolution and the weights would not change. Load the model in float32 (master "
                "weights) and pass compute_dtype=torch.bfloat16 for bf16 compute; model.dtype: bfloat16 in a "
                "recipe does exactly that"
            )
        if compute_dtype == torch.float16:
            raise ConfigError("model.dtype: float16 training needs loss scaling, which this backend does not do; "
                              "use bfloat16 (or float32)")
        self.compute_dtype = compute_dtype if compute_dtype not in (None, torch.float32) else None
        self.model = model
        # Log-probs are taken under the distribution the rollout sampled from (logits / T), so the
        # PPO ratio compares like with like; greedy (T = 0) validation never trains.
        self.temperature = temperature if temperature > 0 else 1.0
        self.tokenizer = tokenizer
        self.actor = actor
        self.rollout_n = rollout_n
        self.device = next(model.parameters()).device
        self.micro_batch_size = micro_batch_size or actor.ppo_micro_batch_size_per_gpu
        self.clip_low = actor.clip_ratio_low if actor.clip_ratio_low is not None else actor.clip_ratio
        self.clip_high = actor.clip_ratio_high if actor.clip_ratio_high is not None else actor.clip_ratio
        self.reference: torch.nn.Module | None = None
        if actor.use_kl_loss:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.set_gradient_checkpointing(actor.gradient_checkpointing)
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=actor.lr,
            betas=tuple(actor.betas),
            weight_decay=actor.weight_decay,
        )
        needs_horizon = actor.lr_scheduler != "constant" or actor.lr_warmup_steps_ratio > 0
        if needs_horizon and not total_steps:
            raise ConfigError(
                f"actor.lr_scheduler={actor.lr_scheduler!r} with lr_warmup_steps_ratio="
                f"{actor.lr_warmup_steps_ratio} needs the number of training steps; set "
                "trainer.total_training_steps"
            )
        self.total_steps = int(total_steps or 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            schedules.lr_lambda(
                actor.lr_scheduler, self.total_steps, actor.lr_warmup_steps_ratio, actor.min_lr_ratio
            ),
        )

    @classmethod
    def from_config(cls, config: Any, *, total_steps: int | None = None, **kwargs: Any) -> "TorchPolicy":
        """Load ``model.path`` (resolved offline) onto ``trainer.device`` and build the optimizer."""
        from userrl_core.models import resolve_model_path

        model_dir = resolve_model_path(config.model.path)
        tokenizer_dir = resolve_model_path(config.model.tokenizer_path) if config.model.tokenizer_path else model_dir
        device = resolve_device(config.trainer.device, config.trainer.gpu_ids)
        model, compute_dtype = load_trainable_lm(model_dir, dtype=config.model.dtype, device=device,
                                                 trust_remote_code=config.model.trust_remote_code)
        tokenizer = load_tokenizer(
            tokenizer_dir, chat_template=config.model.chat_template, trust_remote_code=config.model.trust_remote_code
        )
        return cls(
            model=model,
            tokenizer=tokenizer,
            actor=config.actor,
            rollout_n=config.rollout.n,
            total_steps=total_steps or config.trainer.total_training_steps,
            temperature=config.rollout.temperature,
            compute_dtype=compute_dtype,
        )

    # ------------------------------------------------------------------ switches

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in backward (less memory, about a third more compute).

        transformers 5 calls this activation checkpointing; older releases gradient checkpointing.
        """
        model = self.model
        if enabled:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif getattr(model, "supports_gradient_checkpointing", False):
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()

    @property
    def gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.model.modules())

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def close(self) -> None:
        """Nothing to release in one process: the model and optimizer go with the object."""

    def apply_config(self, config: Any) -> None:
        """Take a changed ``actor`` section mid-run (a stability-guard roll-back, after the best
        state was loaded). Loss settings are read from ``self.actor`` at every update; ``lr``
        becomes the peak of the same schedule at the same point; ``weight_decay`` and ``betas``
        go to the optimizer; switching ``use_kl_loss`` on freezes the current (restored) weights
        as the reference."""
        actor = config.actor
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(initial_lr=actor.lr, lr=actor.lr * factor, weight_decay=actor.weight_decay,
                         betas=tuple(actor.betas))
        self.scheduler.base_lrs = [actor.lr for _ in self.optimizer.param_groups]
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if actor.use_kl_loss and self.reference is None:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        if actor.gradient_checkpointing != self.actor.gradient_checkpointing:
            self.set_gradient_checkpointing(actor.gradient_checkpointing)
        self.actor = actor

    # ------------------------------------------------------------------ log-probs

    def autocast(self) -> Any:
        """The compute-dtype context of forwards (a no-op in fp32)."""
        return compute_autocast(self.device, self.compute_dtype)

    def _forward(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        with self.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits.float()
        return logits if self.temperature == 1.0 else logits / self.temperature

    def _aligned_logprobs(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        shifted = losses.token_logprobs(logits[:, :-1], input_ids[:, 1:])
        return torch.nn.functional.pad(shifted, (1, 0), value=0.0)

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> torch.Tensor:
        """Log-probs of every token under the current (or the frozen reference) model, ``[B, T]``
        on the CPU, computed in micro-batches. Position 0 is 0."""
        if reference and self.reference is None:
            raise RuntimeError("compute_logprobs(reference=True) needs actor.use_kl_loss: true")
        model = self.reference if reference else self.model
        was_training = model.training
        model.eval()
        try:
            out = []
            for rows in _chunks(batch_rows(batch), self.micro_batch_size):
                ids = batch.input_ids[rows].to(self.device)
                mask = batch.attention_mask[rows].to(self.device)
                logits = self._forward(model, ids, mask)
                out.append(self._aligned_logprobs(logits, ids).cpu())
                del logits
            return torch.cat(out, dim=0)
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ update

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """``ppo_epochs`` × mini-batches of optimizer steps on one step's episodes; returns the
        ``actor/*`` metrics (means over micro-batches weighted like the loss, and over steps)."""
        if batch.old_logprobs is None:
            raise ValueError("update() needs batch.old_logprobs: call compute_logprobs(batch) first")
        if self.actor.use_kl_loss and batch.ref_logprobs is None:
            raise ValueError("update() with use_kl_loss needs batch.ref_logprobs: "
                             "call compute_logprobs(batch, reference=True) first")
        started = time.perf_counter()
        lr = self.lr
        totals: dict[str, float] = {}
        grad_norms: list[float] = []
        skipped = n_steps = 0
        self.model.train()
        for _ in range(self.actor.ppo_epochs):
            for rows in self.mini_batches(batch):
                n_steps += 1
                stats = self.accumulate_gradients(select_rows(batch, rows))
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                grad_norm = self._optimizer_step()
                if grad_norm is None:
                    skipped += 1
                else:
                    grad_norms.append(grad_norm)
        self.scheduler.step()
        self.model.eval()
        metrics = {key: value / max(n_steps, 1) for key, value in totals.items()}
        metrics["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        metrics["actor/lr"] = lr
        metrics["actor/optimizer_steps"] = float(len(grad_norms))
        metrics["actor/skipped_steps"] = float(skipped)
        metrics["timing_s/update_actor"] = time.perf_counter() - started
        return metrics

    def mini_batches(self, batch: TrainBatch) -> list[list[int]]:
        """Row indices of each mini-batch: ``ppo_mini_batch_size`` whole GRPO groups when the
        batch carries ``group_ids`` (groups may be short after failed episodes were dropped),
        else ``ppo_mini_batch_size × rollout.n`` rows."""
        n_rows = int(batch.input_ids.shape[0])
        size = self.actor.ppo_mini_batch_size
        if batch.group_ids is None:
            step = size * self.rollout_n
            return [list(range(i, min(i + step, n_rows))) for i in range(0, n_rows, step)]
        groups = [int(g) for g in batch.group_ids]
        out: list[list[int]] = []
        seen: list[int] = []
        for row, group in enumerate(groups):
            if not seen or group != seen[-1]:
                seen.append(group)
                if (len(seen) - 1) % size == 0:
                    out.append([])
            out[-1].append(row)
        return out

    def loss_normaliser(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """The shifted loss mask, tokens per row, all tokens, and the denominator that makes
        micro-batch losses add up to the mini-batch loss (tokens for token-mean; for seq-mean-*
        the sequences with at least one loss token, as ``losses.aggregate`` counts them)."""
        mask_all = batch.loss_mask[:, 1:].float()
        tokens_per_row = mask_all.sum(dim=1)
        total_tokens = float(tokens_per_row.sum())
        if self.actor.loss_agg_mode == "token-mean":
            return mask_all, tokens_per_row, total_tokens, total_tokens
        return mask_all, tokens_per_row, total_tokens, float((tokens_per_row > 0).sum())

    def accumulate_gradients(self, batch: TrainBatch) -> dict[str, float]:
        """Zero the gradients and accumulate the loss gradient of one mini-batch, micro-batch by
        micro-batch. Returns the mini-batch's ``actor/*`` loss statistics. No optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        mask_all, tokens_per_row, total_tokens, denominator = self.loss_normaliser(batch)
        stats: dict[str, float] = {}
        if total_tokens == 0:
            return stats
        for rows in _chunks(list(range(int(batch.input_ids.shape[0]))), self.micro_batch_size):
            n_tokens = float(tokens_per_row[rows].sum())
            if n_tokens == 0:
                continue  # nothing sampled in these rows: they carry no loss
            micro = self._micro_batch_backward(batch, rows, mask_all[rows].to(self.device), denominator)
            for key, value in micro.items():
                # loss terms are already shares of the mini-batch value (the denominator);
                # per-token rates (clip fraction, ppo_kl) are weighted by token count
                share = n_tokens / total_tokens if key in _TOKEN_RATE_METRICS else 1.0
                stats[key] = stats.get(key, 0.0) + value * share
        return stats

    def _micro_batch_backward(
        self, batch: TrainBatch, rows: list[int], mask: torch.Tensor, denominator: float
    ) -> dict[str, float]:
        ids = batch.input_ids[rows].to(self.device)
        logits = self._forward(self.model, ids, batch.attention_mask[rows].to(self.device))[:, :-1]
        logprobs = losses.token_logprobs(logits, ids[:, 1:])
        if self.actor.entropy_coeff:
            entropy = losses.entropy_from_logits(logits)
        else:  # reported only: keep it out of the graph
            with torch.no_grad():
                entropy = losses.entropy_from_logits(logits.detach())
        ref = None
        if self.actor.use_kl_loss:
            ref = batch.ref_logprobs[rows][:, 1:].to(self.device, torch.float32)
        loss, metrics = losses.actor_loss(
            logprobs,
            batch.old_logprobs[rows][:, 1:].to(self.device, torch.float32),
            batch.advantages[rows][:, 1:].to(self.device, torch.float32),
            mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            agg_mode=self.actor.loss_agg_mode,
            entropy=entropy,
            entropy_coeff=self.actor.entropy_coeff,
            ref_logprobs=ref,
            kl_type=self.actor.kl_loss_type,
            kl_coef=self.actor.kl_loss_coef,
            denominator=denominator,
        )
        loss.backward()
        metrics.pop("actor/kl_coef", None)
        return metrics

    def _optimizer_step(self) -> float | None:
        """Clip and step; a non-finite gradient norm skips the step (counted in the metrics)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.actor.grad_clip))
        if not math.isfinite(grad_norm):
            log.warning("non-finite gradient norm (%s): optimizer step skipped", grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ------------------------------------------------------------------ checkpoints

    def save_hf(self, path: str | Path) -> None:
        """Model and tokenizer in Hugging Face format (safetensors), loadable by transformers,
        vLLM and SGLang."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.compute_dtype is None:
            self.model.save_pretrained(str(path))
        else:  # the fp32 master weights, written in the compute dtype (what model.dtype asked for)
            state = {k: v.detach().to(self.compute_dtype) for k, v in self.model.state_dict().items()}
            self.model.save_pretrained(str(path), state_dict=state)
            _set_saved_dtype(path / "config.json", self.compute_dtype)
        self.tokenizer.save_pretrained(str(path))

    def load_hf(self, path: str | Path) -> None:
        """Replace the policy weights in place with those of an HF folder (roll-back, resume).
        The optimizer keeps pointing at the same parameters; the reference model is untouched."""
        fresh = load_causal_lm(path, dtype="auto", device=torch.device("cpu"))
        with torch.no_grad():
            self.model.load_state_dict(fresh.state_dict())
        del fresh

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state (the trainer adds RNG states and the data cursor)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to ``path/policy_state.pt``."""
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / POLICY_STATE_FILE)

    def load_state(self, path: str | Path) -> None:
        state = torch.load(Path(path) / POLICY_STATE_FILE, map_location=self.device, weights_only=False)
        self.load_state_dict(state)


def _set_saved_dtype(config_file: Path, dtype: torch.dtype) -> None:
    """Name ``dtype`` in a saved config.json (``save_pretrained`` writes the in-memory model's
    dtype, fp32 for master weights), so ``dtype="auto"`` loaders get what the file holds."""
    import json

    config = json.loads(config_file.read_text())
    name = str(dtype).removeprefix("torch.")
    keys = [key for key in ("dtype", "torch_dtype") if key in config] or ["dtype"]
    for key in keys:
        config[key] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------- batch helpers


def batch_rows(batch: TrainBatch) -> list[int]:
    return list(range(int(batch.input_ids.shape[0])))


def select_rows(batch: TrainBatch, rows: list[int]) -> TrainBatch:
    """The sub-batch of the given rows (every tensor field sliced alike)."""
    index = torch.as_tensor(rows, dtype=torch.long)

    def take(value: Any) -> Any:
        return None if value is None else value[index]

    return replace(
        batch,
        input_ids=take(batch.input_ids),
        attention_mask=take(batch.attention_mask),
        loss_mask=take(batch.loss_mask),
        advantages=take(batch.advantages),
        old_logprobs=take(batch.old_logprobs),
        ref_logprobs=take(batch.ref_logprobs),
        group_ids=take(batch.group_ids),
    )


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
