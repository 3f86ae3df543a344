"""PPO actor losses as pure functions: clipped surrogate, KL to a reference, entropy, aggregation.

**Alignment convention.** Every ``[B, T]`` tensor here (log-probs, advantages, masks, KL,
entropy) is aligned with the *target* token positions: entry ``t`` belongs to the token the
policy produced at position ``t``. A causal LM's logits at input position ``t`` predict token
``t + 1``, so the training backend shifts once, before calling these functions::

    logits = model(input_ids).logits                    # [B, L, V]
    logprobs = token_logprobs(logits[:, :-1], input_ids[:, 1:])      # [B, L - 1]
    entropy = entropy_from_logits(logits[:, :-1])                    # [B, L - 1]
    mask = loss_mask[:, 1:]                              # 1 on tokens the policy sampled

The numbers follow verl (which UserRL trains with): the dual-clip PPO surrogate with
``clip_ratio_c = 3``, the ``kl`` / ``low_var_kl`` (clamped to [-10, 10]) / ``mse`` estimators,
and the ``token-mean`` / ``seq-mean-token-sum`` / ``seq-mean-token-mean`` aggregations.
``ppo_kl`` is the masked mean of ``old_logprob - logprob`` and ``pg_clipfrac`` the fraction of
masked tokens where the clipped term was the larger loss.

**Micro-batches.** ``aggregate`` takes an optional ``denominator``: the number of loss tokens
(``token-mean``) or of sequences (``seq-mean-*``) in the whole mini-batch. With it, the losses
of the micro-batches add up to the mini-batch loss exactly, so gradient accumulation over
micro-batches gives the same gradient as one pass over the mini-batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "AGG_MODES",
    "KL_TYPES",
    "aggregate",
    "masked_mean",
    "policy_loss",
    "kl_penalty",
    "entropy_from_logits",
    "token_logprobs",
    "actor_loss",
]

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_TYPES = ("kl", "low_var_kl", "mse")
# verl clamps the low-variance KL estimate to this range so that one far-off token cannot blow up.
LOW_VAR_KL_BOUND = 10.0
# Positions whose logits are handled at once for log-probs or entropy (bounds temporary memory).
ROWS_PER_CHUNK = 1024


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is non-zero; 0 (not NaN) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    denominator: float | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values [B, T]`` to a scalar over the tokens where ``mask`` is 1.

    - ``token-mean``: sum over masked tokens / number of masked tokens.
    - ``seq-mean-token-sum``: per-sequence sum, averaged over sequences.
    - ``seq-mean-token-mean``: per-sequence mean, averaged over sequences.

    Sequences without a single masked token do not count as sequences (verl would count them in
    ``seq-mean-token-sum`` and divide 0 by 0 in ``seq-mean-token-mean``). An empty mask gives 0.

    :param denominator: divide by this instead of the token (or sequence) count of this call;
        pass the count of the whole mini-batch when accumulating over micro-batches.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values and mask must have the same shape; got {tuple(values.shape)} and {tuple(mask.shape)}")
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        total = (values * mask).sum()
        count = mask.sum()
    elif mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        per_seq_tokens = mask.sum(dim=-1)
        per_seq = (values * mask).sum(dim=-1)
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / per_seq_tokens.clamp(min=1.0)
        total = per_seq.sum()
        count = (per_seq_tokens > 0).sum().to(values.dtype)
    else:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {', '.join(AGG_MODES)}")
    if denominator is not None:
        if denominator <= 0:
            raise ValueError(f"denominator must be positive; got {denominator}")
        return total / denominator
    return total / count.clamp(min=1.0)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    agg_mode: str = "token-mean",
    clip_ratio_c: float | None = 3.0,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (verl's dual-clip form), aggregated over the masked tokens.

    Per token, with ``ratio = exp(logprob - old_logprob)``::

        clipped = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
        loss    = min(clipped, -A * clip_ratio_c)  if A < 0  else clipped

    The dual clip bounds the loss of a negative-advantage token whose ratio has grown far above
    1; ``clip_ratio_c=None`` turns it off (plain PPO-clip).

    :returns: ``(loss, metrics)`` with metrics ``pg_clipfrac``, ``pg_clipfrac_lower`` (tokens
        where the dual clip acted) and ``ppo_kl`` (masked mean of ``old_logprob - logprob``),
        as Python floats.
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be greater than 1; got {clip_ratio_c}")
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_used = clipped > unclipped
    lower_used = torch.zeros_like(clip_used)
    if clip_ratio_c is not None:
        dual_bound = -advantages * clip_ratio_c
        lower_used = (per_token > dual_bound) & (advantages < 0)
        per_token = torch.where(advantages < 0, torch.minimum(per_token, dual_bound), per_token)
    loss = aggregate(per_token, mask, agg_mode, denominator=denominator)
    with torch.no_grad():
        metrics = {
            "pg_clipfrac": float(masked_mean(clip_used.to(logprobs.dtype), mask)),
            "pg_clipfrac_lower": float(masked_mean(lower_used.to(logprobs.dtype), mask)),
            "ppo_kl": float(masked_mean(-log_ratio, mask)),
        }
    return loss, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and a frozen reference (Schulman's estimators).

    - ``kl`` (k1): ``logprob - ref_logprob``.
    - ``mse`` (k2): ``0.5 * (logprob - ref_logprob)^2``.
    - ``low_var_kl`` (k3): ``exp(ref - logprob) - (ref - logprob) - 1``, clamped to [-10, 10]
      as verl does; non-negative and unbiased for KL(policy || reference).
    """
    diff = logprobs - ref_logprobs
    if kind == "kl":
        return diff
    if kind == "mse":
        return 0.5 * diff.square()
    if kind == "low_var_kl":
        log_ratio = -diff  # ref - logprob
        return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, min=-LOW_VAR_KL_BOUND, max=LOW_VAR_KL_BOUND)
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_TYPES)}")


def _at_least_float32(rows: torch.Tensor) -> torch.Tensor:
    return rows if rows.dtype in (torch.float32, torch.float64) else rows.float()


def _chunk_entropy(rows: torch.Tensor) -> torch.Tensor:
    rows = _at_least_float32(rows)
    log_z = torch.logsumexp(rows, dim=-1)
    probs = torch.softmax(rows, dim=-1)
    return log_z - (probs * rows).sum(dim=-1)


def _chunk_logprobs(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    rows = _at_least_float32(rows)
    return rows.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)


def _by_row_chunks(fn, logits: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to blocks of about ``ROWS_PER_CHUNK`` positions of ``logits [..., T, V]``.

    Blocks are slices (views) of the batch and time axes, so a non-contiguous input such as
    ``logits[:, :-1]`` is never copied as a whole. When gradients are needed each block is
    recomputed in backward (activation checkpointing), so only the logits themselves stay
    alive: the softmax of the whole batch is never stored.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., vocab] with at least one position; got {tuple(logits.shape)}")
    lead = logits.shape[:-1]
    if logits.numel() == 0:
        return logits.new_zeros(lead, dtype=_at_least_float32(logits).dtype)
    # [B, T, V] with B the product of any leading axes (a view for the usual [B, T, V] input).
    grid = logits.reshape(-1, logits.shape[-2], logits.shape[-1]) if logits.dim() >= 3 else logits.unsqueeze(0)
    grid_extra = [e.reshape(grid.shape[:2]) for e in extra]
    batch, time = grid.shape[0], grid.shape[1]
    time_step = min(time, ROWS_PER_CHUNK)
    batch_step = max(1, ROWS_PER_CHUNK // time)
    needs_grad = torch.is_grad_enabled() and logits.requires_grad
    rows = []
    for b in range(0, batch, batch_step):
        blocks = []
        for t in range(0, time, time_step):
            args = [x[b : b + batch_step, t : t + time_step] for x in (grid, *grid_extra)]
            blocks.append(checkpoint(fn, *args, use_reentrant=False) if needs_grad else fn(*args))
        rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows, dim=0).reshape(lead)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at every position: ``[..., V] -> [...]``.

    ``H = logsumexp(z) - sum softmax(z) * z``, computed in float32 (float64 logits stay float64)
    over chunks of rows, so the
    temporary softmax is at most ``ROWS_PER_CHUNK x V``; differentiable.
    """
    return _by_row_chunks(_chunk_entropy, logits)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``labels`` under ``logits``: ``[..., V], [...] -> [...]``.

    Computed in float32 (float64 logits stay float64) as ``z[label] - logsumexp(z)`` over
    chunks of rows, never materialising a full log-softmax. ``labels`` must be valid token ids
    (mask padding out afterwards; do not pass -100).
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])}; got {tuple(labels.shape)}")
    return _by_row_chunks(_chunk_logprobs, logits, labels.long())


def actor_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    agg_mode: str = "token-mean",
    entropy: torch.Tensor | None = None,
    entropy_coeff: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_type: str = "low_var_kl",
    kl_coef: float = 0.0,
    clip_ratio_c: float | None = 3.0,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The full actor objective as verl composes it: ``pg_loss - entropy_coeff * H + kl_coef * KL``.

    The entropy and KL terms use the same aggregation (and ``denominator``) as the surrogate.
    Pass ``entropy`` to get ``actor/entropy`` reported; it enters the loss only when
    ``entropy_coeff`` is non-zero. The KL term is added when ``ref_logprobs`` is given (that is
    what ``actor.use_kl_loss`` switches on); ``kl_coef`` is ignored otherwise. With a
    ``denominator`` the reported values are this micro-batch's share of the mini-batch values.

    :returns: ``(loss, metrics)``; metrics use verl's names (``actor/pg_loss``,
        ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower``, ``actor/ppo_kl``, ``actor/entropy``,
        ``actor/kl_loss``, ``actor/kl_coef``).
    """
    pg, pg_metrics = policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        agg_mode=agg_mode,
        clip_ratio_c=clip_ratio_c,
        denominator=denominator,
    )
    metrics = {f"actor/{name}": value for name, value in pg_metrics.items()}
    metrics["actor/pg_loss"] = float(pg.detach())
    loss = pg
    if entropy is not None:
        entropy_term = aggregate(entropy, mask, agg_mode, denominator=denominator)
        metrics["actor/entropy"] = float(entropy_term.detach())
        if entropy_coeff:
            loss = loss - entropy_coeff * entropy_term
    elif entropy_coeff:
        raise ValueError("entropy_coeff is set but no entropy was given")
    if ref_logprobs is not None:
        kl_term = aggregate(kl_penalty(logprobs, ref_logprobs, kl_type), mask, agg_mode, denominator=denominator)
        metrics["actor/kl_loss"] = float(kl_term.detach())
        metrics["actor/kl_coef"] = float(kl_coef)
        loss = loss + kl_coef * kl_term
    return loss, metrics
