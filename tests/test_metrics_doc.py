"""Same name, same meaning as verl (finding 15 of the reliability review), and docs/metrics.md
lists every metric.

* ``critic/score/*`` and ``critic/rewards/*`` are each episode's sum of turn rewards (verl's
  per-sequence sum of token-level scores, verl/trainer/ppo/metric_utils.py
  ``compute_data_metrics``), not the trajectory score GRPO compares (UserRL's ``Sum`` is a
  mean), which is ``userrl/trajectory_score/*``; advantages and returns are over the tokens the
  policy sampled;
* a tiny real training run (in-process, a loopback simulator) emits only documented metrics,
  and every metric documented for every step or every validation is there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from support.openai_server import OpenAIServer, reply
from support.tiny_runs import JUDGE_VERDICT_NONE, ROOT, is_judge_request, tiny_recipe

from userrl_core.algorithms.scores import userrl_sum
from userrl_core.config import load_recipe
from userrl_core.training.data_metrics import trained_batch_metrics
from userrl_core.training.trainer import run_training
from userrl_core.types import Episode, Task, Turn

METRICS_DOC = ROOT / "docs" / "metrics.md"
PLACEHOLDERS = {"<n>": r"\d+", "<metric>": r".+"}


def episode(rewards: list[float]) -> Episode:
    task = Task(id="t", env_name="Echo", data_source="echo", prompt=[{"role": "user", "content": "hi"}], payload={})
    turns = [Turn(start=0, end=0, text="", action=None, reward=r) for r in rewards]
    return Episode(task=task, group=0, sample=0, token_ids=[], loss_mask=[], prompt_length=0, turns=turns,
                   messages=[])


def test_score_and_rewards_are_sums_of_turn_rewards_and_the_trajectory_score_is_ours():
    episodes = [episode([1.0, 0.5, 0.5]), episode([0.0, 0.25]), episode([0.75])]
    rewards = torch.tensor([[1.0, 0.5, 0.5], [0.0, 0.25, 0.0], [0.75, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    scores = userrl_sum(rewards, mask)  # UserRL's "Sum": the mean of the turn rewards
    advantages = torch.tensor([[0.5, 0.5, 9.0, -1.0], [2.0, 9.0, 9.0, 9.0], [-3.0, 9.0, 9.0, 9.0]])
    sampled = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [1, 0, 0, 0]])  # 9.0 sits on unsampled tokens
    metrics = trained_batch_metrics(episodes, scores, advantages, sampled)
    assert metrics["critic/score/mean"] == pytest.approx((2.0 + 0.25 + 0.75) / 3)
    assert (metrics["critic/score/max"], metrics["critic/score/min"]) == (2.0, 0.25)
    assert (metrics["critic/rewards/mean"], metrics["critic/rewards/max"], metrics["critic/rewards/min"]) == (
        metrics["critic/score/mean"], 2.0, 0.25)
    assert metrics["userrl/trajectory_score/mean"] == pytest.approx((0.6667 + 0.125 + 0.75) / 3)
    assert metrics["userrl/trajectory_score/max"] == pytest.approx(0.75)
    assert metrics["critic/score/mean"] != pytest.approx(metrics["userrl/trajectory_score/mean"])
    for name in ("advantages", "returns"):
        assert metrics[f"critic/{name}/mean"] == pytest.approx((0.5 + 0.5 - 1.0 + 2.0 - 3.0) / 5)
        assert (metrics[f"critic/{name}/max"], metrics[f"critic/{name}/min"]) == (2.0, -3.0)


def documented() -> dict[str, tuple[re.Pattern, str]]:
    """Each metric row of docs/metrics.md: its name as a pattern and its ``when`` column."""
    rows = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        pattern = re.escape(name)
        for placeholder in re.findall(r"<[a-z_]+>", name):
            pattern = pattern.replace(re.escape(placeholder), PLACEHOLDERS.get(placeholder, r"[^/]+"))
        rows[name] = (re.compile(pattern + r"\Z"), cells[3])
    return rows


@pytest.fixture(scope="module")
def run_lines(tmp_path_factory, tiny_model_dir) -> list[dict]:
    """The metrics lines of a tiny real run: validation before training (step 0), then one
    training step with validation (step 1)."""
    root = tmp_path_factory.mktemp("metrics_run")
    with OpenAIServer(default=lambda body: reply(JUDGE_VERDICT_NONE if is_judge_request(body) else "Fine.")) as srv:
        recipe = tiny_recipe(root, tiny_model_dir, api_base=srv.base_url,
                             trainer={"total_training_steps": 1, "test_freq": 1, "val_before_train": True,
                                      "report": False},
                             logging={"progress": False})
        summary = run_training(load_recipe(recipe), run_dir=str(root / "run"))
    assert summary["status"] == "finished"
    return [json.loads(line) for line in (Path(root) / "run" / "metrics.jsonl").read_text().splitlines()]


def test_every_emitted_metric_is_documented_and_every_documented_one_is_emitted(run_lines):
    rows = documented()
    assert len(rows) > 80
    validation_only, step = run_lines
    assert (validation_only["step"], step["step"]) == (0, 1)
    for line in run_lines:
        for key in set(line) - {"step", "epoch", "timestamp"}:
            assert any(pattern.match(key) for pattern, _ in rows.values()), f"{key} is not in docs/metrics.md"
    for name, (pattern, when) in rows.items():
        if when == "step":
            assert any(pattern.match(key) for key in step), f"{name} (every step) missing in step 1"
        elif when == "val":
            for line in run_lines:
                assert any(pattern.match(key) for key in line), f"{name} (validation) missing in step {line['step']}"
        else:
            assert when.startswith("optional: "), f"{name}: when is {when!r}"


def test_a_real_step_reports_verls_meanings(run_lines):
    step = run_lines[1]
    assert step["training/global_step"] == 1.0 and step["training/epoch"] == 0.0
    assert step["timing_s/gen"] == step["timing_s/rollout"] > 0
    assert step["timing_s/step"] == step["perf/time_per_step"] >= step["timing_s/gen"]
    # multi-turn: the response holds the simulator's replies too, so it is longer than the
    # policy's own tokens
    assert step["response_length/mean"] > step["rollout/policy_tokens/mean"] > 0
    assert step["critic/score/mean"] == step["critic/rewards/mean"]
    assert step["critic/returns/mean"] == step["critic/advantages/mean"]
