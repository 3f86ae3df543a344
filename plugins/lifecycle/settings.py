"""The stability guard's recipe section, ``guard.*`` (registered by this plugin with
``register_settings``; docs/guard.md). A recipe overrides only what it names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

RULE_NAMES = (
    "val_reward_drop",
    "entropy_collapse",
    "response_length_collapse",
    "invalid_action_spike",
    "simulator_failure_spike",
    "env_error_spike",
    "grad_norm_vanish",
)


RENAMED = {"trainer.max_simulator_failure_rate": "rules.simulator_failure_spike.threshold"}
"""Old recipe keys -> keys in ``guard``: the trainer's own simulator-failure stop became this
rule's (one place that stops a run for simulator failures, recorded as a guard decision)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GuardRule(_Section):
    """One stability-guard rule. What ``threshold`` compares against depends on the rule:

    - ``val_reward_drop``: validation reward < threshold × best validation reward so far
      (only once a positive best exists, and only when best − value ≥ ``min_drop``);
    - ``entropy_collapse``: ``actor/entropy`` < threshold × its reference;
    - ``response_length_collapse``: ``response_length/mean`` (the whole response after the
      opening, simulator replies included, as verl counts it) < threshold × its reference;
    - ``invalid_action_spike``: ``rollout/invalid_action_rate`` > threshold;
    - ``simulator_failure_spike``: ``simulator/failure_rate`` > threshold;
    - ``env_error_spike``: ``rollout/env_error_rate`` (episodes whose environment raised or
      returned an invalid step) > threshold;
    - ``grad_norm_vanish``: ``actor/grad_norm`` < threshold.

    A reference is the mean of the first ``reference_steps`` values recorded in the run.
    """

    enabled: bool = Field(True, description="Evaluate this rule.")
    action: Literal["warn", "stop", "rollback"] = Field(
        "warn",
        description="When the rule fires: 'warn' logs a decision and goes on; 'stop' ends the run (status "
        "'stopped'); 'rollback' restores the best checkpoint (weights, optimizer, scheduler), applies 'changes' "
        "and continues, at most guard.max_rollbacks times (then it stops).",
    )
    threshold: float = Field(
        description="val_reward_drop / entropy_collapse / response_length_collapse: a fraction of the best or "
        "reference value; invalid_action_spike / simulator_failure_spike / env_error_spike: a rate in [0, 1]; grad_norm_vanish: an "
        "absolute gradient norm."
    )
    patience: int = Field(
        1, ge=1,
        description="Consecutive observations past the threshold before the rule fires (validations for "
        "val_reward_drop, training steps for the others).",
    )
    reference_steps: int = Field(
        3, ge=1,
        description="entropy_collapse / response_length_collapse: the reference is the mean of the first N values "
        "recorded in the run; the rule is silent until N values exist.",
    )
    min_drop: float = Field(
        0.0, ge=0.0,
        description="val_reward_drop: also require best − value ≥ this (reward units), so noise around a small "
        "best does not fire.",
    )
    changes: dict[str, Any] = Field(
        default_factory=dict,
        description="For 'rollback': dotted config keys to set before continuing, e.g. {actor.lr: 5.0e-7} or "
        "{actor.use_kl_loss: true, actor.kl_loss_coef: 0.001}. A string '*F' multiplies the current numeric value "
        "by F ('*0.5' halves the learning rate at each roll-back).",
    )

    @model_validator(mode="after")
    def _changes_only_for_rollback(self) -> "GuardRule":
        if self.changes and self.action != "rollback":
            raise ValueError(f"changes are applied only on roll-back, but action is {self.action!r}")
        for key, value in self.changes.items():
            if isinstance(value, str) and value.startswith("*"):
                try:
                    float(value[1:])
                except ValueError:
                    raise ValueError(f"changes.{key}: {value!r} is not '*<number>'") from None
        return self


def _default_rules() -> dict[str, dict[str, Any]]:
    # Tuned so that a replay of the Qwen3-4B collapse (validation 2.210 at step 75, 2.148 at 130,
    # 1.597 at 135, 0.425 at 140) rolls back at step 140 keeping step 75 (tests/test_guard.py).
    return {
        "val_reward_drop": {"action": "rollback", "threshold": 0.75, "patience": 2, "min_drop": 0.2,
                            "changes": {"actor.lr": "*0.5"}},
        "entropy_collapse": {"action": "warn", "threshold": 0.4, "patience": 3},
        "response_length_collapse": {"action": "warn", "threshold": 0.25, "patience": 3},
        "invalid_action_spike": {"action": "warn", "threshold": 0.5, "patience": 2},
        "simulator_failure_spike": {"action": "stop", "threshold": 0.3, "patience": 2},
        "env_error_spike": {"action": "stop", "threshold": 0.3, "patience": 2},
        "grad_norm_vanish": {"action": "stop", "threshold": 1e-8, "patience": 10},
    }


class GuardConfig(_Section):
    """The stability guard (plugin ``lifecycle``; docs/guard.md). A recipe overrides only what it names:
    ``guard.rules.entropy_collapse.action: stop`` keeps that rule's other settings and every other rule."""

    enabled: bool = Field(True, description="Run the stability guard on every step and validation.")
    max_rollbacks: int = Field(
        2, ge=0, description="Roll-backs at most per run; a roll-back rule firing after that stops the run."
    )
    rules: dict[str, GuardRule] = Field(
        default_factory=lambda: {k: GuardRule(**v) for k, v in _default_rules().items()},
        description="Rules by name: " + ", ".join(RULE_NAMES) + ". Given keys are merged over the defaults.",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_rule_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("rules") is None:
            return data
        given = data["rules"]
        if not isinstance(given, dict):
            return data  # pydantic reports the type error
        unknown = sorted(set(given) - set(RULE_NAMES))
        if unknown:
            raise ValueError(f"unknown guard rule(s) {unknown}; known: {list(RULE_NAMES)}")
        merged: dict[str, Any] = {}
        for name, default in _default_rules().items():
            rule = given.get(name)
            if isinstance(rule, GuardRule):
                merged[name] = rule
            elif isinstance(rule, dict):
                base = dict(default)
                if "action" in rule and rule["action"] != "rollback" and "changes" not in rule:
                    base.pop("changes", None)
                merged[name] = {**base, **rule}
            elif rule is None:
                merged[name] = default
            else:
                merged[name] = rule  # pydantic reports the type error
        return {**data, "rules": merged}


    @model_validator(mode="after")
    def _changes_name_real_keys(self, info: ValidationInfo) -> "GuardConfig":
        """Roll-back changes name keys of the run's config ('*F' only numeric ones); checked when
        the recipe loader validates this section as part of a run (it passes ``run_config``)."""
        from userrl_core.config.dotted import MISSING, lookup

        run_config = (info.context or {}).get("run_config")
        if run_config is None:
            return self
        data = run_config.model_dump(mode="python")
        for rule_name, rule in self.rules.items():
            for key, value in rule.changes.items():
                current = lookup(data, key, MISSING)
                if current is MISSING:
                    raise ValueError(f"guard.rules.{rule_name}.changes: {key!r} is not a config key")
                if isinstance(value, str) and value.startswith("*") and (
                    isinstance(current, bool) or not isinstance(current, (int, float))
                ):
                    raise ValueError(f"guard.rules.{rule_name}.changes: {key!r} is not numeric, cannot scale it")
        return self
