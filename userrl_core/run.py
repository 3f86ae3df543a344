"""The live handle on a run that lifecycle plugins receive.

Stoppers (the stability guard, user plugins) do not raise: they ask. The trainer reads the
requests after each hook call and acts on them, so every decision is logged in one place
(``decisions.jsonl`` and the summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Decision:
    """One stopper decision: what rule fired, with which numbers, and what was asked."""

    step: int
    rule: str
    action: str  # warn | stop | rollback
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rule": self.rule, "action": self.action, "message": self.message,
                "data": self.data, "changes": self.changes}


@dataclass
class RunHandle:
    """What lifecycle hooks see: the validated config, the run folder, the current step,
    the best validation so far, and the way to ask for a stop or a roll-back."""

    config: Any
    run_dir: Path
    step: int = 0
    best_step: int | None = None
    best_score: float | None = None
    rollbacks: int = 0
    decisions: list[Decision] = field(default_factory=list)
    pending: Decision | None = None  # the stop or roll-back the trainer must act on
    state: dict[str, Any] = field(default_factory=dict)  # free space for plugins

    def warn(self, rule: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.decisions.append(Decision(self.step, rule, "warn", message, data or {}))

    def request_stop(self, rule: str, message: str, data: dict[str, Any] | None = None) -> None:
        decision = Decision(self.step, rule, "stop", message, data or {})
        self.decisions.append(decision)
        self.pending = decision

    def request_rollback(
        self, rule: str, message: str, data: dict[str, Any] | None = None, changes: dict[str, Any] | None = None
    ) -> None:
        decision = Decision(self.step, rule, "rollback", message, data or {}, changes or {})
        self.decisions.append(decision)
        if self.pending is None or self.pending.action != "stop":
            self.pending = decision
