"""Item 2: the vectorised multi-turn advantage against a per-episode loop of the same formula.

``userrl_core.algorithms.advantages.grpo_multiturn_advantages`` (gather, scatter and segment
sums over the whole batch) is timed against two loop implementations of the same formula kept
here as references, on the same random batch: 512 episodes x 8,192 token positions x 16 turn
slots, GRPO groups of 8, R2G credits of random rewards (some zero, so zero-credit episodes
occur). All must agree within 1e-6 (compared in float64).

* :func:`reference_loop` is the straightforward version the goal is set against: a Python loop
  over episodes and, inside, over their tokens (how a per-episode implementation reads).
* :func:`reference_turn_masks` still loops over episodes and turns but lets torch handle each
  row (one boolean mask per turn): a stronger, half-vectorised baseline, reported for scale.

Usage::

    python -m benchmarks.bench_credit_assignment           # 512 x 8192 x 16, medians of 5 / 3 runs
    python -m benchmarks.bench_credit_assignment --quick   # 32 x 1024 x 8
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import median, print_table, write_results
from userrl_core.algorithms.advantages import grpo_multiturn_advantages
from userrl_core.algorithms.credits import reward_to_go


def make_batch(episodes: int, tokens: int, turns: int, group_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch shaped like real rollouts: a prompt, then per turn a sampled span and an
    environment reply (both of random length), then padding. ``token_turn`` is -1 off-policy."""
    generator = torch.Generator().manual_seed(seed)
    token_turn = torch.full((episodes, tokens), -1, dtype=torch.long)
    n_turns = torch.randint(1, turns + 1, (episodes,), generator=generator)
    for e in range(episodes):
        position = int(torch.randint(64, 256, (1,), generator=generator))
        room = (tokens - position) // int(n_turns[e])
        for k in range(int(n_turns[e])):
            sampled = int(torch.randint(1, max(2, room // 2), (1,), generator=generator))
            reply = int(torch.randint(0, max(1, room - sampled), (1,), generator=generator))
            token_turn[e, position:position + sampled] = k
            position += sampled + reply
    turn_mask = (torch.arange(turns).unsqueeze(0) < n_turns.unsqueeze(1)).float()
    rewards = torch.rand(episodes, turns, generator=generator) * (torch.rand(episodes, turns, generator=generator) > 0.4)
    rewards = rewards * turn_mask
    return {
        "token_turn": token_turn,
        "turn_credits": reward_to_go(rewards, turn_mask).to(torch.float64),
        "scores": (rewards.sum(1) / n_turns).to(torch.float64),
        "group_ids": torch.arange(episodes) // group_size,
    }


def _group_normalized(scores: torch.Tensor, group_ids: torch.Tensor, eps: float) -> list[float]:
    """``(s - group mean) / (group std + eps)``, single-member groups with mean 0, std 1."""
    members: dict[int, list[int]] = {}
    for e, g in enumerate(group_ids.tolist()):
        members.setdefault(g, []).append(e)
    normalized = torch.zeros(len(scores), dtype=torch.float64)
    for rows in members.values():
        group_scores = scores[rows].to(torch.float64)
        if len(rows) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = float(group_scores.mean()), float(group_scores.std())
        for e in rows:
            normalized[e] = (float(scores[e]) - mean) / (std + eps)
    return normalized.tolist()


def reference_loop(token_turn: torch.Tensor, turn_credits: torch.Tensor, scores: torch.Tensor,
                   group_ids: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """The formula of ``grpo_multiturn_advantages`` (norm_by_std=True) as plain loops over
    episodes and their tokens. Kept only as the benchmark's reference."""
    normalized = _group_normalized(scores, group_ids, eps)
    credits = turn_credits.tolist()
    rows = []
    for e, turns_of_tokens in enumerate(token_turn.tolist()):
        row = [credits[e][k] if k >= 0 else 0.0 for k in turns_of_tokens]
        total = sum(row)
        nonzero = sum(1 for value in row if value != 0.0)
        scale = normalized[e] * nonzero / total if total != 0.0 else 0.0
        rows.append([value * scale for value in row])
    return torch.tensor(rows, dtype=torch.float64)


def reference_turn_masks(token_turn: torch.Tensor, turn_credits: torch.Tensor, scores: torch.Tensor,
                         group_ids: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """The same formula, looping over episodes and turns with torch doing each row."""
    normalized = _group_normalized(scores, group_ids, eps)
    out = torch.zeros(token_turn.shape, dtype=torch.float64)
    for e in range(token_turn.shape[0]):
        row = torch.zeros(token_turn.shape[1], dtype=torch.float64)
        for k in range(turn_credits.shape[1]):
            row[token_turn[e] == k] = float(turn_credits[e, k])
        total = float(row.sum())
        if total == 0.0:
            continue
        nonzero = int((row != 0).sum())
        out[e] = row * (float(normalized[e]) * nonzero / total)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Credit assignment: vectorised vs loop (item 2).")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 x 1024 x 8")
    parser.add_argument("--episodes", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="runs of the vectorised version")
    parser.add_argument("--reference-repeats", type=int, default=3, help="runs of the loop reference")
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.tokens, args.turns, args.repeats, args.reference_repeats = 32, 1024, 8, 3, 1

    batch = make_batch(args.episodes, args.tokens, args.turns, args.group_size)

    def vectorised() -> torch.Tensor:
        return grpo_multiturn_advantages(batch["token_turn"], batch["turn_credits"], batch["scores"],
                                         batch["group_ids"], dtype=torch.float64)

    inputs = (batch["token_turn"], batch["turn_credits"], batch["scores"], batch["group_ids"])

    def timed_runs(fn, times: int) -> tuple[list[float], torch.Tensor]:
        samples, result = [], None
        for _ in range(times):
            started = time.perf_counter()
            result = fn()
            samples.append(time.perf_counter() - started)
        return samples, result

    vectorised()  # warm-up (allocator, first-call dispatch)
    fast_times, fast = timed_runs(vectorised, args.repeats)
    slow_times, slow = timed_runs(lambda: reference_loop(*inputs), args.reference_repeats)
    masks_times, masks = timed_runs(lambda: reference_turn_masks(*inputs), args.reference_repeats)
    max_abs_diff = float((fast - slow).abs().max())
    masks_diff = float((masks - slow).abs().max())
    if max(max_abs_diff, masks_diff) > 1e-6:
        raise AssertionError(f"implementations differ by {max(max_abs_diff, masks_diff):.3g} (> 1e-6)")
    speedup = median(slow_times) / median(fast_times)
    float32_diff = float((vectorised().to(torch.float32).to(torch.float64) - slow).abs().max())
    shape = f"{args.episodes} x {args.tokens} x {args.turns}"
    print_table(
        f"Credit assignment, {shape} (episodes x tokens x turns), threads={torch.get_num_threads()}",
        ["implementation", "median s", "runs", "speed-up vs loop", "max |diff| vs loop"],
        [["per-episode, per-token loop (reference)", median(slow_times), len(slow_times), 1.0, 0.0],
         ["per-episode, per-turn torch masks", median(masks_times), len(masks_times),
          median(slow_times) / median(masks_times), masks_diff],
         ["grpo_multiturn_advantages", median(fast_times), len(fast_times), speedup, max_abs_diff]],
    )
    payload = {
        "settings": vars(args), "shape": shape,
        "vectorised_s": fast_times, "reference_loop_s": slow_times, "reference_turn_masks_s": masks_times,
        "median_vectorised_s": median(fast_times), "median_reference_loop_s": median(slow_times),
        "median_reference_turn_masks_s": median(masks_times),
        "speedup": speedup, "speedup_vs_turn_masks": median(masks_times) / median(fast_times),
        "max_abs_diff_float64": max_abs_diff, "max_abs_diff_float32_output": float32_diff,
        "goal": {"speedup_at_least": 50, "max_abs_diff_at_most": 1e-6,
                 "met": speedup >= 50 and max_abs_diff <= 1e-6},
    }
    path = write_results("bench_credit_assignment", payload)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
