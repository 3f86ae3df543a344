"""Learning-rate schedules: hand-computed factors and a real AdamW driven by LambdaLR."""

from __future__ import annotations

import math

import pytest
import torch

from userrl_core.algorithms import schedules


def test_constant_with_warmup_table():
    # 8 steps, warm-up ratio 0.25 -> int(2.0) = 2 warm-up steps: 0/2, 1/2, then 1
    factor = schedules.lr_lambda("constant", 8, 0.25, 0.5)
    assert [factor(s) for s in range(9)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_constant_without_warmup_starts_at_full_rate():
    factor = schedules.lr_lambda("constant", 5)
    assert [factor(s) for s in range(5)] == [1.0] * 5


def test_warmup_steps_truncate_like_verl():
    assert schedules.warmup_steps(10, 0.15) == 1  # int(1.5)
    assert schedules.warmup_steps(10, 0.0) == 0
    assert schedules.warmup_steps(7, 1.0) == 7


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # warm-up: 0 / 2
        (1, 0.5),  # warm-up: 1 / 2
        (2, 1.0),  # progress 0: 0.1 + 0.9 * 0.5 * (1 + cos 0) = 1
        # progress (4 - 2) / 8 = 0.25: cos(pi / 4) = 0.707107 -> 0.1 + 0.9 * 0.853553 = 0.868198
        (4, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
        (6, 0.55),  # progress 0.5: 0.1 + 0.9 * 0.5 * (1 + 0) = 0.55
        (10, 0.1),  # progress 1: cos(pi) = -1 -> the floor 0.1
        (13, 0.1),  # past the end: stays at the floor
    ],
)
def test_cosine_table(step, expected):
    # 10 steps, warm-up ratio 0.2 -> 2 warm-up steps, 8 decay steps, floor 0.1
    factor = schedules.lr_lambda("cosine", 10, 0.2, 0.1)
    assert factor(step) == pytest.approx(expected, abs=1e-12)


def test_cosine_without_floor_reaches_zero_and_is_monotone_after_warmup():
    factor = schedules.lr_lambda("cosine", 20, 0.1, 0.0)
    values = [factor(s) for s in range(2, 21)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_drives_adamw_through_lambda_lr():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules.lr_lambda("cosine", 4, 0.25, 0.0))
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    # warm-up 1 step: 0; then progress 0, 1/3, 2/3: 1, 0.75, 0.25 (times 1e-3)
    assert seen == pytest.approx([0.0, 1e-3, 0.75e-3, 0.25e-3], abs=1e-15)


@pytest.mark.parametrize(
    "args, message",
    [
        (("linear", 10), "unknown learning-rate schedule 'linear'"),
        (("cosine", 0), "total_steps must be at least 1"),
        (("cosine", 10, 1.5), "warmup_ratio must be in"),
        (("cosine", 10, 0.1, -0.1), "min_lr_ratio must be in"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        schedules.lr_lambda(*args)
