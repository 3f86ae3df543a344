"""Item 3: one GRPO update against the bare forward + backward + AdamW step.

Both run on the same model (SmolLM2-135M-Instruct, CPU, fp32) and the same fixed token batch:

* **GRPO update**: ``TorchPolicy.update(batch)`` of the ``transformers`` training backend with
  one mini-batch and one micro-batch (the whole batch), i.e. one optimizer step: log-probs of
  the sampled tokens, the PPO-clip loss with GRPO advantages, the (reported) entropy, backward,
  gradient clipping, AdamW and the LR schedule step.
* **bare step**: ``model(input_ids).logits`` -> masked token cross-entropy -> ``backward()``
  -> ``AdamW.step()`` -> ``zero_grad()``: what any training loop has to pay.

The two are timed alternately (bare, update, bare, update, ...) after one warm-up each, so that
machine load drifts hit both alike; the ratio reported is the median over pairs of
update / bare (a pair's two runs are seconds apart, so a burst of load from other processes
spoils one pair, not the figure). The ratio of the medians is reported too.
``old_logprobs`` are computed once beforehand and timed separately (the trainer's
``timing_s/old_log_prob`` phase; not part of the update).

Usage::

    python -m benchmarks.bench_trainer_overhead           # SmolLM2-135M, 2 x 256 tokens, 5 pairs
    python -m benchmarks.bench_trainer_overhead --quick   # a tiny random Llama, 2 pairs
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import median, print_table, write_results


def load_model(quick: bool):
    from transformers import AutoTokenizer

    from userrl_core.models import resolve_model_path
    from userrl_plugins.backends.torch_policy import load_causal_lm

    folder = resolve_model_path("builtin:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not quick:
        return load_causal_lm(folder, dtype="float32", device=torch.device("cpu")), tokenizer, "SmolLM2-135M-Instruct"
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config), tokenizer, "tiny random Llama (2 layers, hidden 64)"


def make_batch(rows: int, length: int, vocab: int, seed: int = 0):
    """Random tokens; the second half of every row is 'sampled' (loss mask 1) with random advantages."""
    from userrl_core.types import TrainBatch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    loss_mask = torch.zeros(rows, length, dtype=torch.long)
    loss_mask[:, length // 2:] = 1
    advantages = torch.randn(rows, 1, generator=generator).expand(rows, length) * loss_mask
    return TrainBatch(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), loss_mask=loss_mask,
                      advantages=advantages.contiguous(), group_ids=torch.zeros(rows, dtype=torch.long))


def bare_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> None:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    mask = batch.loss_mask[:, 1:].float()
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch.input_ids[:, 1:].reshape(-1), reduction="none")
    loss = (losses * mask.reshape(-1)).sum() / mask.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Trainer overhead: GRPO update vs bare step (item 3).")
    parser.add_argument("--quick", action="store_true", help="smoke run on a tiny random model")
    parser.add_argument("--rows", type=int, default=2, help="sequences in the batch")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--pairs", type=int, default=7, help="timed (bare, update) pairs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs = 2

    from userrl_core.config.schema import ActorConfig
    from userrl_plugins.backends.torch_policy import TorchPolicy

    model, tokenizer, model_name = load_model(args.quick)
    model.train()
    batch = make_batch(args.rows, args.length, model.config.vocab_size)
    actor = ActorConfig(lr=1e-6, ppo_mini_batch_size=args.rows, ppo_micro_batch_size_per_gpu=args.rows,
                        grad_clip=1.0, entropy_coeff=0.0, use_kl_loss=False)
    policy = TorchPolicy(model=model, tokenizer=tokenizer, actor=actor, rollout_n=1, total_steps=None)
    bare_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6,
                                       betas=(0.9, 0.999), weight_decay=0.01)

    started = time.perf_counter()
    batch.old_logprobs = policy.compute_logprobs(batch)
    old_logprob_s = time.perf_counter() - started

    def time_bare() -> float:
        model.train()
        started = time.perf_counter()
        bare_step(model, bare_optimizer, batch)
        return time.perf_counter() - started

    def time_update() -> float:
        started = time.perf_counter()
        metrics = policy.update(batch)
        elapsed = time.perf_counter() - started
        if metrics["actor/optimizer_steps"] != 1.0:
            raise AssertionError(f"expected one optimizer step, the update made {metrics['actor/optimizer_steps']}")
        return elapsed

    time_bare(), time_update()  # warm-up: allocator, AdamW state creation
    bare, update = [], []
    for _ in range(args.pairs):
        bare.append(time_bare())
        update.append(time_update())
    pair_ratios = [u / b for u, b in zip(update, bare)]
    ratio = median(pair_ratios)
    tokens = args.rows * args.length
    print_table(
        f"Trainer overhead: {model_name}, CPU fp32, {args.rows} x {args.length} tokens, "
        f"{args.pairs} alternating pairs, threads={torch.get_num_threads()}",
        ["step", "median s", "tokens/s", "ratio to bare (median of pairs)"],
        [["bare forward + backward + AdamW", median(bare), tokens / median(bare), 1.0],
         ["GRPO update (TorchPolicy.update)", median(update), tokens / median(update), ratio],
         ["old log-probs (separate phase)", old_logprob_s, tokens / old_logprob_s, old_logprob_s / median(bare)]],
    )
    payload = {
        "settings": vars(args), "model": model_name, "tokens": tokens,
        "bare_s": bare, "update_s": update, "old_logprob_s": old_logprob_s,
        "median_bare_s": median(bare), "median_update_s": median(update),
        "ratio": ratio, "pair_ratios": pair_ratios, "ratio_of_medians": median(update) / median(bare),
        "goal": {"ratio_at_most": 1.10, "met": ratio <= 1.10},
    }
    path = write_results("bench_trainer_overhead", payload)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
