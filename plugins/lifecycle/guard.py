"""The stability guard: catches a collapsing run while it collapses, not 325 steps later.

Each rule is a pure function over the metric history kept in a :class:`GuardState`: it looks at
the value recorded at the current step and says whether it is past the rule's threshold (or
returns ``None`` when the step recorded no value for it). The driver, :func:`observe`, counts
consecutive breaches per rule and fires a rule when its count reaches ``patience``; a rule fires
once per streak and re-arms when a value is back inside the threshold.

Firing asks the run (``RunHandle``) to warn, stop, or roll back to the best checkpoint and go on
with the rule's ``changes``. A roll-back is only asked for while fewer than
``guard.max_rollbacks`` were asked for and a best checkpoint exists; otherwise the guard asks for
a stop and says why. Validation rules run on ``on_validation_end``; training rules on
``on_step_end`` (whose metrics may also hold the validation metrics of that step; they are not
counted twice). The validation reward is :func:`userrl_core.training.val_reward.validation_reward`: the
mean of ``val-core/<data_source>/reward/mean@n`` over data sources.

Rules, thresholds and defaults: ``userrl_plugins.lifecycle.settings.GuardRule`` and docs/guard.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel

from userrl_core.config.sections import section_settings
from userrl_core.training.val_reward import validation_reward
from userrl_plugins.lifecycle.settings import GuardConfig, GuardRule

log = logging.getLogger(__name__)

STATE_KEY = "guard"


@dataclass
class GuardState:
    """What the guard remembers between calls (kept in ``run.state["guard"]``)."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # training metric history
    val_scores: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float | None = None
    best_checkpoint_step: int | None = None
    streaks: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # consecutive breaches per rule
    fired: set[str] = field(default_factory=set)  # rules that already fired in their current streak
    rollbacks_requested: int = 0
    seen_rollbacks: int = 0  # run.rollbacks as last seen: a change means the trainer restored the best

    def latest(self, metric: str, step: int) -> float | None:
        """The value of ``metric`` recorded at ``step``, or None."""
        points = self.series.get(metric)
        if not points or points[-1][0] != step:
            return None
        return points[-1][1]

    def reference(self, metric: str, count: int) -> float | None:
        """The mean of the first ``count`` recorded values of ``metric``; None until there are that many."""
        points = self.series.get(metric, [])
        if len(points) < count:
            return None
        return sum(v for _, v in points[:count]) / count


@dataclass(frozen=True)
class Observation:
    """One rule's reading at one step: the value, the limit it was held against, and the verdict."""

    breached: bool
    value: float
    limit: float
    detail: dict[str, Any] = field(default_factory=dict)


RuleCheck = Callable[[GuardState, GuardRule, int], "Observation | None"]


# --------------------------------------------------------------------------------------------
# Rules: pure functions of (state, rule settings, step)
# --------------------------------------------------------------------------------------------


def check_val_reward_drop(state: GuardState, rule: GuardRule, step: int) -> Observation | None:
    """Validation reward below ``threshold`` × the best so far (and at least ``min_drop`` under it).

    Silent until a positive best exists: a fraction of a best that is zero or negative says nothing.
    """
    if not state.val_scores or state.val_scores[-1][0] != step:
        return None
    if state.best_score is None or state.best_score <= 0:
        return None
    value = state.val_scores[-1][1]
    limit = rule.threshold * state.best_score
    breached = value < limit and state.best_score - value >= rule.min_drop
    return Observation(breached, value, limit, {"best": state.best_score, "best_step": state.best_step})


def ratio_to_reference(metric: str) -> RuleCheck:
    """``metric`` below ``threshold`` × its reference (the mean of its first ``reference_steps`` values)."""

    def check(state: GuardState, rule: GuardRule, step: int) -> Observation | None:
        value = state.latest(metric, step)
        reference = state.reference(metric, rule.reference_steps)
        if value is None or reference is None or reference <= 0:
            return None
        return Observation(value < rule.threshold * reference, value, rule.threshold * reference,
                           {"reference": reference})

    return check


def above(metric: str) -> RuleCheck:
    """``metric`` above ``threshold``."""

    def check(state: GuardState, rule: GuardRule, step: int) -> Observation | None:
        value = state.latest(metric, step)
        return None if value is None else Observation(value > rule.threshold, value, rule.threshold)

    return check


def below(metric: str) -> RuleCheck:
    """``metric`` below ``threshold``."""

    def check(state: GuardState, rule: GuardRule, step: int) -> Observation | None:
        value = state.latest(metric, step)
        return None if value is None else Observation(value < rule.threshold, value, rule.threshold)

    return check


@dataclass(frozen=True)
class RuleSpec:
    check: RuleCheck
    on: Literal["validation", "step"]
    metric: str
    what: str  # how the message names the breach, e.g. "below threshold × reference"


VAL_REWARD = "validation reward"  # userrl_core.training.val_reward.validation_reward

RULES: dict[str, RuleSpec] = {
    "val_reward_drop": RuleSpec(check_val_reward_drop, "validation", VAL_REWARD, "below {t:g} × best"),
    "entropy_collapse": RuleSpec(ratio_to_reference("actor/entropy"), "step", "actor/entropy",
                                 "below {t:g} × reference"),
    "response_length_collapse": RuleSpec(ratio_to_reference("response_length/mean"), "step",
                                         "response_length/mean", "below {t:g} × reference"),
    "invalid_action_spike": RuleSpec(above("rollout/invalid_action_rate"), "step", "rollout/invalid_action_rate",
                                     "above {t:g}"),
    "simulator_failure_spike": RuleSpec(above("simulator/failure_rate"), "step", "simulator/failure_rate",
                                        "above {t:g}"),
    "env_error_spike": RuleSpec(above("rollout/env_error_rate"), "step", "rollout/env_error_rate", "above {t:g}"),
    "grad_norm_vanish": RuleSpec(below("actor/grad_norm"), "step", "actor/grad_norm", "below {t:g}"),
}


# --------------------------------------------------------------------------------------------
# Driver: streaks, firing, actions
# --------------------------------------------------------------------------------------------


def guard_config(run: Any) -> GuardConfig:
    config = getattr(run, "config", None)
    return section_settings(config, "guard", GuardConfig) if isinstance(config, BaseModel) else GuardConfig()


def state_of(run: Any) -> GuardState:
    state = run.state.get(STATE_KEY)
    if not isinstance(state, GuardState):
        state = GuardState()
        best = Path(run.run_dir) / "checkpoints" / "best"
        if best.is_dir():  # a resumed run: its best checkpoint is there to roll back to
            state.best_checkpoint_step = getattr(run, "best_step", None)
        run.state[STATE_KEY] = state
    return state


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def record_training_metrics(state: GuardState, step: int, metrics: Mapping[str, Any]) -> None:
    """Append this step's values of the metrics training rules read."""
    for spec in RULES.values():
        if spec.on != "step":
            continue
        value = _number(metrics.get(spec.metric))
        if value is None:
            continue
        points = state.series.setdefault(spec.metric, [])
        if points and points[-1][0] == step:
            points[-1] = (step, value)
        else:
            points.append((step, value))


def record_validation(run: Any, state: GuardState, step: int, metrics: Mapping[str, Any]) -> float | None:
    """Append this validation's reward and update the best (also on the run handle)."""
    score = validation_reward(metrics)
    if score is None:
        return None
    state.val_scores.append((step, score))
    run_best = getattr(run, "best_score", None)
    if run_best is not None and (state.best_score is None or run_best > state.best_score):
        state.best_step, state.best_score = run.best_step, run_best  # set by the trainer (or restored on resume)
    if state.best_score is None or score > state.best_score:
        state.best_step, state.best_score = step, score
    if getattr(run, "best_score", None) is None or score > run.best_score:
        run.best_step, run.best_score = step, score
    return score


def _notice_restores(run: Any, state: GuardState) -> None:
    """After the trainer restored the best checkpoint, old streaks describe discarded weights."""
    if run.rollbacks != state.seen_rollbacks:
        state.seen_rollbacks = run.rollbacks
        state.streaks.clear()
        state.fired.clear()


def observe(run: Any, step: int, on: Literal["validation", "step"], config: GuardConfig) -> None:
    """Evaluate every enabled rule that runs ``on`` this event and act on the ones that fire."""
    state = state_of(run)
    for name, spec in RULES.items():
        rule = config.rules.get(name)
        if spec.on != on or rule is None or not rule.enabled:
            continue
        observation = spec.check(state, rule, step)
        if observation is None:
            continue
        if not observation.breached:
            state.streaks.pop(name, None)
            state.fired.discard(name)
            continue
        streak = state.streaks.setdefault(name, [])
        streak.append((step, observation.value))
        if len(streak) >= rule.patience and name not in state.fired:
            state.fired.add(name)
            fire(run, state, config, name, rule, observation, step)


def _message(name: str, spec: RuleSpec, rule: GuardRule, observation: Observation, streak: list[tuple[int, float]]) -> str:
    steps = ", ".join(str(s) for s, _ in streak[-rule.patience:])
    unit = "validations" if spec.on == "validation" else "steps"
    text = (f"{name}: {spec.metric} = {observation.value:.4g} {spec.what.format(t=rule.threshold)} "
            f"(limit {observation.limit:.4g}")
    if "best" in observation.detail:
        text += f", best {observation.detail['best']:.4g} at step {observation.detail['best_step']}"
    if "reference" in observation.detail:
        text += f", reference {observation.detail['reference']:.4g}"
    return text + f") for {len(streak[-rule.patience:])} {unit} in a row (steps {steps})"


def fire(run: Any, state: GuardState, config: GuardConfig, name: str, rule: GuardRule,
         observation: Observation, step: int) -> None:
    """Turn a fired rule into a decision on the run handle."""
    spec = RULES[name]
    streak = state.streaks.get(name, [])
    message = _message(name, spec, rule, observation, streak)
    data: dict[str, Any] = {
        "step": step,
        "metric": spec.metric,
        "value": observation.value,
        "limit": observation.limit,
        "threshold": rule.threshold,
        "patience": rule.patience,
        "streak": [{"step": s, "value": v} for s, v in streak[-rule.patience:]],
        **observation.detail,
    }
    if rule.action == "warn":
        log.warning("guard: %s", message)
        run.warn(name, message, data)
        return
    if rule.action == "stop":
        log.warning("guard: stopping the run: %s", message)
        run.request_stop(name, message, data)
        return
    used = max(getattr(run, "rollbacks", 0), state.rollbacks_requested)
    has_best = state.best_checkpoint_step is not None or (Path(run.run_dir) / "checkpoints" / "best").is_dir()
    if used >= config.max_rollbacks or not has_best:
        reason = (f"roll-back limit reached ({used} of guard.max_rollbacks={config.max_rollbacks})"
                  if has_best else "no best checkpoint to roll back to")
        data.update({"requested_action": "rollback", "rollbacks": used})
        log.warning("guard: stopping the run: %s; %s", message, reason)
        run.request_stop(name, f"{message}; {reason}, so the run stops", data)
        return
    state.rollbacks_requested = used + 1
    data.update({"rollback_to_step": state.best_checkpoint_step or state.best_step, "rollbacks": used + 1})
    log.warning("guard: rolling back to the best checkpoint: %s", message)
    run.request_rollback(name, f"{message}; roll-back {used + 1} of {config.max_rollbacks} to the best "
                               f"checkpoint (step {data['rollback_to_step']})", data, dict(rule.changes))
    state.streaks.clear()
    state.fired.clear()


# --------------------------------------------------------------------------------------------
# Lifecycle hooks (registered by plugins/lifecycle/plugin.py)
# --------------------------------------------------------------------------------------------


def on_run_start(run: Any) -> None:
    if guard_config(run).enabled:
        state_of(run)


def on_validation_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    config = guard_config(run)
    if not config.enabled:
        return
    state = state_of(run)
    _notice_restores(run, state)
    if record_validation(run, state, step, metrics) is not None:
        observe(run, step, "validation", config)


def on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    config = guard_config(run)
    if not config.enabled:
        return
    state = state_of(run)
    _notice_restores(run, state)
    record_training_metrics(state, step, metrics)
    observe(run, step, "step", config)


def on_checkpoint_saved(run: Any, step: int, path: Any, is_best: bool) -> None:
    if is_best:
        state_of(run).best_checkpoint_step = step
