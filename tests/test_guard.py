"""The stability guard: each rule, each action, the recipe schema, and a replay of the Qwen3-4B
IntentionGym run whose validation reward collapsed after step 130 (the issue's numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from userrl_core.config import validate_config
from userrl_core.config.schema import RunConfig
from userrl_core.errors import ConfigError
from userrl_core.run import RunHandle
from userrl_plugins.lifecycle import guard
from userrl_plugins.lifecycle.settings import GuardConfig

VAL_KEY = "val-core/interact_intention/reward/mean@1"


def make_config(**guard_settings) -> RunConfig:
    return validate_config({"model": {"path": "m"}, "data": {"train_files": ["t.parquet"]}, "guard": guard_settings})


def make_run(tmp_path: Path, **guard_settings) -> RunHandle:
    return RunHandle(config=make_config(**guard_settings), run_dir=tmp_path)


def step(run: RunHandle, n: int, metrics: dict[str, float], *, val: float | None = None, best_ckpt: bool = True) -> None:
    """Do what the trainer does at one step: validate (hooks), checkpoint the best, end the step."""
    run.step = n
    line = dict(metrics)
    if val is not None:
        val_metrics = {VAL_KEY: val}
        guard.on_validation_end(run, n, val_metrics)
        if best_ckpt and run.best_step == n:
            guard.on_checkpoint_saved(run, n, run.run_dir / "checkpoints" / "best", True)
        line.update(val_metrics)
    guard.on_step_end(run, n, line)


def only_rule(name: str, **settings) -> dict:
    """Guard settings with every rule but ``name`` switched off."""
    rules = {r: {"enabled": r == name} for r in guard.RULES}
    rules[name].update(settings)
    return {"rules": rules}


# ------------------------------------------------------------------ the 4B replay


def _interp(knots: list[tuple[int, float]], x: int) -> float:
    if x <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in zip(knots, knots[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return knots[-1][1]


VAL_KNOTS = [(5, 1.688), (20, 2.028), (75, 2.210), (85, 2.145), (130, 2.148), (135, 1.597), (140, 0.425),
             (150, 0.0), (460, 0.0)]


def qwen3_4b_stream() -> list[tuple[int, dict[str, float], float | None]]:
    """The issue's run as a metrics stream: validation every 5 steps at the given values (linear in
    between), entropy 0.182 → 0.115, response length ~2,960 → 315 around the collapse, pg_loss and
    grad_norm → 0 once every group scores the same."""
    stream = []
    for n in range(1, 461):
        metrics = {
            "actor/entropy": _interp([(1, 0.182), (150, 0.115)], n),
            "response_length/mean": _interp([(1, 2960.0), (130, 2960.0), (150, 315.0)], n),
            "actor/grad_norm": _interp([(1, 0.05), (140, 0.05), (150, 0.0)], n),
            "actor/pg_loss": _interp([(1, 0.01), (140, 0.01), (150, 0.0)], n),
            "rollout/invalid_action_rate": 0.02,
            "simulator/failure_rate": 0.0,
            "critic/rewards/mean": _interp(VAL_KNOTS, max(n, 5)),
        }
        stream.append((n, metrics, _interp(VAL_KNOTS, n) if n % 5 == 0 else None))
    return stream


def replay(run: RunHandle, stream, *, until_first_action: bool) -> list:
    """Feed the stream; on a roll-back do what the trainer does (count it) and go on with the same
    numbers (the pessimistic what-if: the collapse comes back); on a stop, end."""
    for n, metrics, val in stream:
        step(run, n, metrics, val=val)
        pending, run.pending = run.pending, None
        if pending is None:
            continue
        if until_first_action or pending.action == "stop":
            return [pending]
        run.rollbacks += 1
    return []


def test_replay_of_the_4b_collapse_acts_by_step_140_and_keeps_step_75(tmp_path):
    run = RunHandle(config=make_config(), run_dir=tmp_path)  # the default rules
    (first_action,) = replay(run, qwen3_4b_stream(), until_first_action=True)
    assert first_action.action in {"stop", "rollback"}
    assert first_action.step <= 140
    assert first_action.rule == "val_reward_drop"
    assert run.best_step == 75
    assert run.best_score == pytest.approx(2.210)
    assert first_action.data["best_step"] == 75
    assert [s["step"] for s in first_action.data["streak"]] == [135, 140]
    assert first_action.changes == {"actor.lr": "*0.5"}


def test_replay_to_the_end_is_bounded_by_max_rollbacks(tmp_path):
    run = RunHandle(config=make_config(), run_dir=tmp_path)
    (stop,) = replay(run, qwen3_4b_stream(), until_first_action=False)
    actions = [(d.step, d.rule, d.action) for d in run.decisions]
    rollbacks = [a for a in actions if a[2] == "rollback"]
    assert len(rollbacks) == 2  # guard.max_rollbacks
    assert rollbacks[0][0] == 140
    assert stop.action == "stop" and stop.step <= 160  # the run did not go on to step 460
    assert run.best_step == 75


# ------------------------------------------------------------------ each rule


def test_val_reward_drop_needs_patience_in_a_row(tmp_path):
    run = make_run(tmp_path, **only_rule("val_reward_drop", action="warn", threshold=0.8, patience=2, min_drop=0.0))
    step(run, 5, {}, val=1.0)
    step(run, 10, {}, val=0.7)  # one below 0.8 × 1.0
    step(run, 15, {}, val=0.9)  # back above: the streak restarts
    step(run, 20, {}, val=0.7)
    assert run.decisions == []
    step(run, 25, {}, val=0.75)
    (decision,) = run.decisions
    assert (decision.step, decision.rule, decision.action) == (25, "val_reward_drop", "warn")
    assert decision.data["value"] == pytest.approx(0.75)
    assert decision.data["limit"] == pytest.approx(0.8)
    assert decision.data["best"] == pytest.approx(1.0) and decision.data["best_step"] == 5
    assert "0.75" in decision.message and "steps 20, 25" in decision.message


def test_val_reward_drop_respects_min_drop_and_nonpositive_best(tmp_path):
    run = make_run(tmp_path, **only_rule("val_reward_drop", action="warn", threshold=0.75, patience=1, min_drop=0.2))
    step(run, 5, {}, val=0.0)
    step(run, 10, {}, val=-0.5)  # best is 0: a fraction of it means nothing
    step(run, 15, {}, val=0.3)
    step(run, 20, {}, val=0.15)  # half of best, but only 0.15 under it
    assert run.decisions == []
    step(run, 25, {}, val=0.05)
    assert [d.step for d in run.decisions] == [25]


def test_validation_reward_is_the_mean_over_data_sources(tmp_path):
    run = make_run(tmp_path, **only_rule("val_reward_drop", action="warn", threshold=0.5, patience=1))
    run.step = 5
    guard.on_validation_end(run, 5, {"val-core/a/reward/mean@4": 2.0, "val-core/b/reward/mean@4": 1.0,
                                     "val-aux/a/turns/mean@4": 9.0})
    assert run.best_score == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("rule", "metric", "good", "bad"),
    [
        ("entropy_collapse", "actor/entropy", 0.2, 0.05),
        ("response_length_collapse", "response_length/mean", 1000.0, 100.0),
    ],
)
def test_collapse_rules_compare_to_the_mean_of_the_first_values(tmp_path, rule, metric, good, bad):
    run = make_run(tmp_path, **only_rule(rule, action="warn", threshold=0.3, patience=3, reference_steps=3))
    for n in (1, 2, 3):
        step(run, n, {metric: good})
    for n in (4, 5):
        step(run, n, {metric: bad})
    step(run, 6, {"other/metric": 1.0})  # a step without the metric neither breaks nor extends the streak
    assert run.decisions == []
    step(run, 7, {metric: bad})
    (decision,) = run.decisions
    assert decision.step == 7 and decision.rule == rule
    assert decision.data["reference"] == pytest.approx(good)
    assert decision.data["limit"] == pytest.approx(0.3 * good)
    assert [s["step"] for s in decision.data["streak"]] == [4, 5, 7]


def test_collapse_rule_is_silent_until_the_reference_exists(tmp_path):
    run = make_run(tmp_path, **only_rule("entropy_collapse", action="warn", threshold=0.5, patience=1,
                                         reference_steps=3))
    step(run, 1, {"actor/entropy": 1.0})
    step(run, 2, {"actor/entropy": 0.01})
    assert run.decisions == []  # reference needs three values
    step(run, 3, {"actor/entropy": 0.01})
    assert run.decisions[0].data["reference"] == pytest.approx(0.34)


@pytest.mark.parametrize(
    ("rule", "metric", "good", "bad", "threshold"),
    [
        ("invalid_action_spike", "rollout/invalid_action_rate", 0.1, 0.8, 0.5),
        ("simulator_failure_spike", "simulator/failure_rate", 0.0, 0.4, 0.3),
        ("env_error_spike", "rollout/env_error_rate", 0.0, 0.6, 0.3),
        ("grad_norm_vanish", "actor/grad_norm", 0.3, 0.0, 1e-8),
    ],
)
def test_threshold_rules_fire_after_patience_steps(tmp_path, rule, metric, good, bad, threshold):
    run = make_run(tmp_path, **only_rule(rule, action="warn", threshold=threshold, patience=2))
    step(run, 1, {metric: good})
    step(run, 2, {metric: bad})
    step(run, 3, {metric: good})
    step(run, 4, {metric: bad})
    assert run.decisions == []
    step(run, 5, {metric: bad})
    (decision,) = run.decisions
    assert (decision.step, decision.rule, decision.data["metric"]) == (5, rule, metric)
    assert decision.data["value"] == pytest.approx(bad) and decision.data["threshold"] == threshold


def test_a_warning_fires_once_per_streak_and_rearms(tmp_path):
    run = make_run(tmp_path, **only_rule("grad_norm_vanish", action="warn", threshold=1e-3, patience=1))
    for n, value in enumerate([0.0, 0.0, 0.0, 1.0, 0.0], start=1):
        step(run, n, {"actor/grad_norm": value})
    assert [d.step for d in run.decisions] == [1, 5]


def test_disabled_guard_and_disabled_rule_do_nothing(tmp_path):
    run = make_run(tmp_path, enabled=False)
    for n in range(1, 10):
        step(run, n, {"actor/grad_norm": 0.0, "simulator/failure_rate": 1.0}, val=1.0 if n == 1 else 0.0)
    assert run.decisions == [] and run.pending is None
    run = make_run(tmp_path, **only_rule("grad_norm_vanish", enabled=False))
    for n in range(1, 10):
        step(run, n, {"actor/grad_norm": 0.0})
    assert run.decisions == []


# ------------------------------------------------------------------ each action


def test_stop_action_asks_the_trainer_to_stop(tmp_path):
    run = make_run(tmp_path, **only_rule("simulator_failure_spike", action="stop", threshold=0.3, patience=1))
    step(run, 3, {"simulator/failure_rate": 0.9})
    assert run.pending is not None and run.pending.action == "stop"
    assert run.pending.rule == "simulator_failure_spike" and run.pending.step == 3


def test_rollback_action_carries_the_changes(tmp_path):
    settings = only_rule("val_reward_drop", action="rollback", threshold=0.5, patience=1,
                         changes={"actor.use_kl_loss": True, "actor.kl_loss_coef": 0.001})
    run = make_run(tmp_path, **settings)
    step(run, 5, {}, val=2.0)
    step(run, 10, {}, val=0.1)
    decision = run.pending
    assert decision is not None and decision.action == "rollback" and decision.step == 10
    assert decision.changes == {"actor.use_kl_loss": True, "actor.kl_loss_coef": 0.001}
    assert decision.data["rollback_to_step"] == 5


def test_rollback_without_a_best_checkpoint_stops_and_says_why(tmp_path):
    run = make_run(tmp_path, **only_rule("grad_norm_vanish", action="rollback", threshold=1e-3, patience=1))
    step(run, 1, {"actor/grad_norm": 0.0})
    assert run.pending.action == "stop"
    assert run.pending.data["requested_action"] == "rollback"
    assert "no best checkpoint" in run.pending.message


def test_rollback_with_a_best_folder_on_disk_from_a_resumed_run(tmp_path):
    (tmp_path / "checkpoints" / "best").mkdir(parents=True)
    run = make_run(tmp_path, **only_rule("grad_norm_vanish", action="rollback", threshold=1e-3, patience=1))
    step(run, 1, {"actor/grad_norm": 0.0})
    assert run.pending.action == "rollback"


def test_rollbacks_are_bounded_then_the_run_stops(tmp_path):
    settings = only_rule("val_reward_drop", action="rollback", threshold=0.5, patience=1, min_drop=0.0)
    run = make_run(tmp_path, max_rollbacks=1, **settings)
    step(run, 5, {}, val=1.0)
    step(run, 10, {}, val=0.1)
    assert run.pending.action == "rollback"
    run.pending = None
    run.rollbacks = 1  # the trainer restored the best
    step(run, 15, {}, val=0.1)
    assert run.pending.action == "stop"
    assert "roll-back limit reached" in run.pending.message
    assert [d.action for d in run.decisions] == ["rollback", "stop"]


def test_rollback_limit_counts_requests_even_if_the_trainer_resets_its_counter(tmp_path):
    settings = only_rule("val_reward_drop", action="rollback", threshold=0.5, patience=1, min_drop=0.0)
    run = make_run(tmp_path, max_rollbacks=1, **settings)
    step(run, 5, {}, val=1.0)
    step(run, 10, {}, val=0.1)
    run.pending = None  # the trainer's counter stays 0 (e.g. restored from the best checkpoint's state)
    step(run, 15, {}, val=0.1)
    assert run.pending.action == "stop"


def test_decisions_serialise_with_rule_numbers_and_step(tmp_path):
    import json

    run = make_run(tmp_path, **only_rule("grad_norm_vanish", action="stop", threshold=1e-3, patience=2))
    step(run, 1, {"actor/grad_norm": 0.0})
    step(run, 2, {"actor/grad_norm": 0.0})
    record = json.loads(json.dumps(run.decisions[0].as_dict()))
    assert record["step"] == 2 and record["rule"] == "grad_norm_vanish" and record["action"] == "stop"
    assert record["data"]["value"] == 0.0 and record["data"]["threshold"] == 1e-3
    assert record["data"]["streak"] == [{"step": 1, "value": 0.0}, {"step": 2, "value": 0.0}]


# ------------------------------------------------------------------ recipe schema


def test_a_recipe_overrides_only_what_it_names():
    config = make_config(rules={"entropy_collapse": {"action": "stop"}})
    assert config.guard.rules["entropy_collapse"].action == "stop"
    assert config.guard.rules["entropy_collapse"].threshold == GuardConfig().rules["entropy_collapse"].threshold
    assert set(config.guard.rules) == set(guard.RULES)
    assert config.guard.rules["val_reward_drop"].changes == {"actor.lr": "*0.5"}


def test_unknown_rule_and_bad_changes_are_named():
    with pytest.raises(ConfigError, match="entropy_colapse"):
        make_config(rules={"entropy_colapse": {"action": "stop"}})
    with pytest.raises(ConfigError, match="actor.learning_rate"):
        make_config(rules={"val_reward_drop": {"changes": {"actor.learning_rate": 1e-7}}})
    with pytest.raises(ConfigError, match="not numeric"):
        make_config(rules={"val_reward_drop": {"changes": {"actor.lr_scheduler": "*2"}}})
    with pytest.raises(ConfigError, match="only on roll-back"):
        make_config(rules={"entropy_collapse": {"action": "warn", "changes": {"actor.lr": 1e-7}}})
    # switching a roll-back rule to 'stop' drops the default changes instead of failing
    assert make_config(rules={"val_reward_drop": {"action": "stop"}}).guard.rules["val_reward_drop"].changes == {}


def test_the_trainer_applies_scaled_changes():
    from userrl_core.config import apply_changes

    config = make_config()
    changed = apply_changes(config, {"actor.lr": "*0.5", "actor.use_kl_loss": True})
    assert changed.actor.lr == pytest.approx(config.actor.lr / 2)
    assert changed.actor.use_kl_loss is True


def test_the_guard_loads_through_the_entry_point():
    from userrl_core.plugins import get_plugin_manager

    manager = get_plugin_manager(fresh=True)
    info = manager.plugins["lifecycle"]
    assert info.status == "ok", info.error
    assert {"on_step_end", "on_validation_end", "on_checkpoint_saved"} <= set(info.hooks)


# ------------------------------------------------------------------ roll-back with the real trainer pieces


def test_rollback_restores_the_exact_best_state_and_applies_changes(tmp_path, tiny_model_dir):
    """The real Trainer, CheckpointManager and TorchPolicy (tiny random Llama): train, save the best,
    train on and rotate step checkpoints, roll back; weights, AdamW moments, the LR schedule and the
    RNG are those of the best step, the step counter keeps counting, and the lr is halved."""
    import copy

    import torch

    from userrl_core.training.build import build_components
    from userrl_core.training.trainer import Trainer

    root = Path(__file__).resolve().parents[1]
    config = validate_config({
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": [str(root / "data/intentiongym/userrl_splits/train.parquet")],
                 "train_batch_size": 2},
        "rollout": {"action_format": "plain_text"},
        "actor": {"lr": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps_ratio": 0.2, "ppo_mini_batch_size": 2},
        "trainer": {"total_training_steps": 20, "device": "cpu", "max_ckpt_to_keep": 1},
    })
    trainer = Trainer(config, tmp_path, build_components(config))
    policy = trainer.c.training

    def train(steps: int) -> None:
        for _ in range(steps):
            ids = torch.randint(5, 500, (2, 12))
            policy.model(input_ids=ids).logits.float().pow(2).mean().backward()
            policy.optimizer.step()
            policy.scheduler.step()
            policy.optimizer.zero_grad()
            trainer.step += 1

    train(3)
    trainer.handle.best_step, trainer.handle.best_score = trainer.step, 1.0
    trainer._save(is_best=True)
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    optimizer = copy.deepcopy(policy.optimizer.state_dict())
    scheduler = copy.deepcopy(policy.scheduler.state_dict())
    rng = torch.get_rng_state()
    lr_at_best = policy.lr

    for _ in range(3):  # later step checkpoints rotate; the best stays
        train(2)
        trainer._save(is_best=False)
    assert not (tmp_path / "checkpoints" / "step_000003").exists()
    assert (tmp_path / "checkpoints" / "best").is_dir()
    assert any(not torch.equal(weights[k], v) for k, v in policy.model.state_dict().items())

    trainer._rollback({"actor.lr": "*0.5"})

    for key, value in policy.model.state_dict().items():
        assert torch.equal(weights[key], value), key
    restored = policy.optimizer.state_dict()["state"]
    assert restored.keys() == optimizer["state"].keys()
    for index, state in optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(restored[index][name])), (index, name)
    assert policy.scheduler.state_dict()["last_epoch"] == scheduler["last_epoch"] == 3
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.step == 9  # the counter keeps counting: metrics stay monotonic
    assert trainer.handle.rollbacks == 1
    assert trainer.config.actor.lr == pytest.approx(5e-4)
    assert policy.lr == pytest.approx(lr_at_best * 0.5)  # same point of the schedule, half the peak


def test_a_resumed_run_compares_to_the_best_it_restored(tmp_path):
    run = make_run(tmp_path, **only_rule("val_reward_drop", action="warn", threshold=0.75, patience=2))
    run.best_step, run.best_score = 75, 2.21  # restored from the checkpoint by the trainer
    step(run, 145, {}, val=1.0)
    step(run, 150, {}, val=1.0)
    (decision,) = run.decisions
    assert decision.data["best_step"] == 75 and decision.data["best"] == pytest.approx(2.21)
    assert run.best_step == 75
