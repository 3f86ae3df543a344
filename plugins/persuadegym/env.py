"""The PersuadeGym environment: argue a simulated persona out of a statement it holds.

Semantics follow UserRL's PersuadeGym (``gyms/PersuadeGym/persuadegym/env/persuade_env.py``), so
scores compare:

- The persona starts at "Strongly Agree" (level 0 of 7).
- ``action``, ``answer`` or ``search``: the content is an argument. The persona (one simulator
  call) replies and states its new stance; the turn reward is the levels it moved toward
  disagreement since its previous stance, divided by 6, and 0 when it stays or moves back.
  Moving back and forth earns the forward moves again, as in UserRL.
- The episode ends when the persona reaches "Strongly Disagree", on ``finish`` (reward 0, no
  simulator call) or after ``max_turns`` steps.

Unlike UserRL, a reply with no usable stance is never read as "no change": it is re-asked
``stance_retries`` times, then the step fails (``status=SIMULATOR_FAILED``, ``reward=None``)
and the rollout engine leaves the episode out of training and counts it, as IntentionGym does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.types import Action, Message, Simulator, SimulatorError, SimulatorRequest, StepResult, StepStatus, Task
from userrl_plugins.env_settings import parse_env_settings
from userrl_plugins.persuadegym import prompts
from userrl_plugins.persuadegym.stance import GOAL, START, STANCES, PersonaReply, StanceReplyError, levels_reward, parse_persona_reply
from userrl_plugins.persuadegym.tasks import DEFAULT_VAL_PARQUET, Statement, resolve_task

SETTINGS_KEY = "env.PersuadeGym"


class PersuadeGymSettings(BaseModel):
    """The recipe's ``env.PersuadeGym`` mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(15, ge=1, description="Steps per episode at most (UserRL: 15); rollout.max_turns also applies.")
    stance_retries: int = Field(2, ge=0, description="Re-asks when the persona's reply holds no usable stance.")
    history_turns: int | None = Field(
        None, ge=0, description="Earlier argument/reply pairs shown to the persona; all of them by default (UserRL)."
    )


def parse_settings(settings: dict[str, Any] | PersuadeGymSettings | None) -> PersuadeGymSettings:
    return parse_env_settings(PersuadeGymSettings, settings, SETTINGS_KEY)


class _PersonaFailed(Exception):
    """The persona never gave a usable stance."""


class PersuadeGymEnv:
    """One PersuadeGym episode (see the module docstring for the rules)."""

    def __init__(self, *, task: Task, spec: Statement, simulator: Simulator, settings: PersuadeGymSettings):
        self.task = task
        self.spec = spec
        self.simulator = simulator
        self.settings = settings
        self._start()

    def _start(self) -> None:
        self.level = START
        self.best_level = START
        self.rewards: list[float] = []
        self.history: list[tuple[str, str]] = []
        self.steps = 0
        self.arguments = 0
        self.reasks = 0
        self.done = False

    async def reset(self) -> list[Message]:
        self._start()
        if self.task.prompt:
            return [dict(m) for m in self.task.prompt]
        return prompts.opening_messages(self.spec.claim)

    async def step(self, action: Action) -> StepResult:
        if self.done:
            raise RuntimeError("PersuadeGym episode is over; call reset() first")
        self.steps += 1
        if action.choice == "finish":
            return self._end_turn("Conversation ended.", 0.0, "finish", {})
        argument = action.content.strip()
        if not argument:
            return self._end_turn("Give an argument against the statement.", 0.0, None, {})
        self.arguments += 1
        try:
            reply = await self._ask(argument)
        except (SimulatorError, _PersonaFailed) as exc:
            self.done = True
            return StepResult(observation="", reward=None, done=True, info={"end_reason": "failed"},
                              status=StepStatus.SIMULATOR_FAILED, error=str(exc))
        previous, self.level = self.level, reply.level
        self.best_level = max(self.best_level, self.level)
        self.history.append((argument, reply.response))
        reward = levels_reward(previous, self.level)
        info = {"stance": reply.stance, "previous_stance": STANCES[previous], "levels_moved": self.level - previous}
        return self._end_turn(reply.response, reward, "persuaded" if self.level == GOAL else None, info)

    def metrics(self) -> dict[str, float]:
        return {
            "score": float(sum(self.rewards)),
            "final_level": float(self.level),
            "best_level": float(self.best_level),
            "persuaded": float(self.level == GOAL),
            "turns": float(self.steps),
            "arguments": float(self.arguments),
            "persona/reasks": float(self.reasks),
        }

    # ------------------------------------------------------------------ helpers

    def _end_turn(self, observation: str, reward: float, end: str | None, info: dict[str, Any]) -> StepResult:
        if end is None and self.steps >= self.settings.max_turns:
            end = "max_turns"
        self.rewards.append(reward)
        self.done = end is not None
        if end:
            info["end_reason"] = end
        return StepResult(observation=observation, reward=reward, done=self.done, info=info)

    async def _ask(self, argument: str) -> PersonaReply:
        keep = self.settings.history_turns
        history = self.history if keep is None else self.history[-keep:] if keep else []
        stance = STANCES[self.level]
        request = SimulatorRequest(
            purpose="reply",
            messages=prompts.persona_messages(self.spec.claim, self.spec.argument, stance, history, argument),
            context=prompts.request_context(self.spec.claim, stance, argument, self.arguments),
            response_format="json",
        )
        problem = ""
        for attempt in range(self.settings.stance_retries + 1):
            if attempt:
                self.reasks += 1
            response = await self.simulator.complete(request)
            try:
                return parse_persona_reply(response.text)
            except StanceReplyError as exc:
                problem = str(exc)
                request = SimulatorRequest(
                    purpose="reply", messages=prompts.reask_messages(request.messages, response.text, problem),
                    context=request.context, response_format="json",
                )
        raise _PersonaFailed(
            f"the persona gave no usable stance after {self.settings.stance_retries + 1} attempt(s): {problem}"
        )


class PersuadeGymFactory:
    """The registered ``PersuadeGym`` factory: builds episodes, validates dataset rows.

    ``default_tasks`` is UserRL's test split (42 rows), used by ``userrl simulate PersuadeGym``.
    """

    settings_model = PersuadeGymSettings
    needs_simulator = True
    default_tasks = str(DEFAULT_VAL_PARQUET)

    def __call__(self, *, task: Task, simulator: Simulator, settings: dict[str, Any] | None = None,
                 seed: int = 0, **kwargs: Any) -> PersuadeGymEnv:
        return PersuadeGymEnv(task=task, spec=resolve_task(task), simulator=simulator,
                              settings=parse_settings(settings))

    def validate_task(self, task: Task, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Raise a ``ValueError`` or pydantic error naming the field when ``task`` cannot run."""
        parse_settings(settings)
        resolve_task(task)


make_env = PersuadeGymFactory()
