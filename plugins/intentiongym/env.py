"""The IntentionGym environment: one episode of clarifying questions about one vague request.

Semantics follow UserRL's IntentionGym, so scores compare:

- ``action`` (a clarifying question): the simulated user replies and the judge decides which
  still-missing details the question covers, in two concurrent simulator calls; the turn reward
  comes from :func:`~userrl_plugins.intentiongym.rewards.turn_reward`.
- ``answer``: UserRL strips the ``[answer]`` tag and evaluates the text exactly like a question,
  so this environment does the same.
- ``finish``: the episode ends with reward 0 and no simulator call.
- The episode also ends when every detail is covered or after ``max_turns`` steps (a finish
  counts as a step, as in UserRL).

Unlike UserRL, a failed simulator call is never turned into a canned reply and reward 0: the
step comes back with ``status=SIMULATOR_FAILED`` and ``reward=None`` and the episode ends, so
the trainer can leave it out. A judge reply with no usable JSON is re-asked ``judge_retries``
times, then fails the step the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from userrl_core.errors import ConfigError
from userrl_core.types import (
    Action,
    Message,
    Simulator,
    SimulatorError,
    SimulatorRequest,
    StepResult,
    StepStatus,
    Task,
)
from userrl_plugins.intentiongym import prompts
from userrl_plugins.intentiongym.judge import JudgeReplyError, JudgeVerdict, parse_judge_reply
from userrl_plugins.intentiongym.rewards import DEFAULT_MULTI_DETAIL_PENALTY, turn_reward
from userrl_plugins.intentiongym.tasks import (
    DEFAULT_TASK_FILES,
    DEFAULT_VAL_PARQUET,
    IntentionTask,
    MissingDetail,
    TaskBank,
    TaskBankError,
    resolve_task,
)

SETTINGS_KEY = "env.IntentionGym"


class IntentionGymSettings(BaseModel):
    """The recipe's ``env.IntentionGym`` mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_penalty: float = Field(0.0, ge=0.0, description="Subtracted from every question's reward (UserRL: 0).")
    multi_detail_penalty: float = Field(
        DEFAULT_MULTI_DETAIL_PENALTY, ge=0.0,
        description="Subtracted per extra detail a single question covers (UserRL: 0.2).",
    )
    max_turns: int = Field(15, ge=1, description="Steps per episode at most (UserRL: 15); rollout.max_turns also applies.")
    task_files: list[str] | None = Field(
        None, description="JSON task bank files that resolve row ids to missing details; the shipped UserRL files by default."
    )
    judge_retries: int = Field(2, ge=0, description="Re-asks when the judge's reply holds no parsable JSON verdict.")
    history_turns: int = Field(3, ge=0, description="Earlier question/answer pairs shown to the user and the judge (UserRL: 3).")


def parse_settings(settings: dict[str, Any] | IntentionGymSettings | None) -> IntentionGymSettings:
    if isinstance(settings, IntentionGymSettings):
        return settings
    try:
        return IntentionGymSettings.model_validate(dict(settings or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{SETTINGS_KEY}.{key}: {err['msg']}") from None


def _bank(settings: IntentionGymSettings) -> TaskBank:
    try:
        return TaskBank.from_files(settings.task_files or [str(f) for f in DEFAULT_TASK_FILES])
    except TaskBankError as exc:
        raise ConfigError(f"{SETTINGS_KEY}.task_files: {exc}") from None


class _JudgeFailed(Exception):
    """The judge never produced a usable verdict."""


class IntentionGymEnv:
    """One IntentionGym episode (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        task: Task,
        spec: IntentionTask,
        simulator: Simulator,
        settings: IntentionGymSettings,
        seed: int,
    ):
        self.task = task
        self.spec = spec
        self.simulator = simulator
        self.settings = settings
        self.seed = seed
        self._start()

    def _start(self) -> None:
        self.remaining: list[MissingDetail] = list(self.spec.missing_details)
        self.covered: list[MissingDetail] = []
        self.rewards: list[float] = []
        self.history: list[tuple[str, str]] = []
        self.steps = 0
        self.questions = 0
        self.done = False
        self.failed = False
        self.out_of_range = 0
        self.judge_reasks = 0

    # ------------------------------------------------------------------ protocol

    async def reset(self) -> list[Message]:
        self._start()
        if self.task.prompt:
            return [dict(m) for m in self.task.prompt]
        return prompts.opening_messages(self.spec)

    async def step(self, action: Action) -> StepResult:
        if self.done:
            raise RuntimeError("IntentionGym episode is over; call reset() first")
        self.steps += 1
        if action.choice == "finish":
            return self._finish()
        return await self._ask(action.content.strip())

    def metrics(self) -> dict[str, float]:
        total = len(self.spec.missing_details)
        out = {
            "score": float(sum(self.rewards)),
            "score_max": float(max(self.rewards, default=0.0)),
            "coverage": len(self.covered) / total,
            "turns": float(self.steps),
            "questions": float(self.questions),
            "judge/out_of_range": float(self.out_of_range),
            "judge/reasks": float(self.judge_reasks),
        }
        for level in (3, 2, 1):
            of_level = sum(1 for d in self.spec.missing_details if d.importance == level)
            if of_level:
                got = sum(1 for d in self.covered if d.importance == level)
                out[f"coverage/importance_{level}"] = got / of_level
        return out

    # ------------------------------------------------------------------ steps

    def _finish(self) -> StepResult:
        self.done = True
        self.rewards.append(0.0)
        total = len(self.spec.missing_details)
        observation = f"Conversation ended. {len(self.covered)} of {total} missing details were clarified."
        return StepResult(observation=observation, reward=0.0, done=True, info=self._info([], "finish"))

    async def _ask(self, question: str) -> StepResult:
        self.questions += 1
        shown = prompts.numbered_details(self.remaining)
        history = self.history[-self.settings.history_turns:] if self.settings.history_turns else []
        context = prompts.request_context(self.spec, question, shown, turn=self.questions, seed=self.seed)
        reply_request = SimulatorRequest(
            purpose="reply",
            messages=prompts.reply_messages(self.spec, question, history),
            context=context,
            response_format="text",
        )
        judge_request = SimulatorRequest(
            purpose="judge",
            messages=prompts.judge_messages(self.spec, question, history, shown),
            context=context,
            response_format="json",
        )
        reply, judged = await asyncio.gather(
            self.simulator.complete(reply_request),
            self._judge(judge_request, {n for n, _ in shown}),
            return_exceptions=True,
        )
        for outcome in (reply, judged):
            if isinstance(outcome, (SimulatorError, _JudgeFailed)):
                return self._fail(str(outcome))
            if isinstance(outcome, BaseException):
                raise outcome
        verdict, judge_calls = judged
        self.out_of_range += verdict.out_of_range

        newly = [shown[n - 1][1] for n in verdict.covered]
        self.remaining = [d for n, d in shown if n not in verdict.covered]
        self.covered.extend(newly)
        reward = turn_reward(
            [d.importance for d in newly],
            step_penalty=self.settings.step_penalty,
            multi_detail_penalty=self.settings.multi_detail_penalty,
        )
        self.rewards.append(reward)
        observation = reply.text.strip()
        self.history.append((question, observation))

        end_reason = None
        if not self.remaining:
            end_reason = "all_covered"
        elif self.steps >= self.settings.max_turns:
            end_reason = "max_turns"
        self.done = end_reason is not None
        info = self._info(newly, end_reason)
        info["judge/out_of_range"] = verdict.out_of_range
        info["simulator/calls"] = 1 + judge_calls
        return StepResult(observation=observation, reward=reward, done=self.done, info=info)

    async def _judge(self, request: SimulatorRequest, numbers: set[int]) -> tuple[JudgeVerdict, int]:
        """Ask the judge, re-asking on an unusable reply; returns the verdict and the calls made."""
        problem = ""
        for attempt in range(self.settings.judge_retries + 1):
            if attempt:
                self.judge_reasks += 1
            response = await self.simulator.complete(request)
            try:
                return parse_judge_reply(response.text, numbers), attempt + 1
            except JudgeReplyError as exc:
                problem = str(exc)
                request = SimulatorRequest(
                    purpose="judge",
                    messages=prompts.judge_reask_messages(request.messages, response.text, problem),
                    context=request.context,
                    response_format="json",
                )
        raise _JudgeFailed(
            f"judge gave no usable verdict after {self.settings.judge_retries + 1} attempt(s): {problem}"
        )

    def _fail(self, error: str) -> StepResult:
        self.done = True
        self.failed = True
        info = self._info([], "failed")
        return StepResult(
            observation="", reward=None, done=True, info=info, status=StepStatus.SIMULATOR_FAILED, error=error
        )

    def _info(self, newly: list[MissingDetail], end_reason: str | None) -> dict[str, Any]:
        total = len(self.spec.missing_details)
        info: dict[str, Any] = {
            "coverage": len(self.covered) / total,
            "covered_by_importance": {
                str(level): sum(1 for d in self.covered if d.importance == level) for level in (3, 2, 1)
            },
            "newly_covered": [d.description for d in newly],
            "remaining": len(self.remaining),
        }
        if end_reason:
            info["end_reason"] = end_reason
        return info


class IntentionGymFactory:
    """The registered ``IntentionGym`` factory: builds episodes, validates dataset rows.

    ``default_tasks`` is the shipped UserRL validation split (40 rows), used by
    ``userrl simulate`` when no task file is given.
    """

    settings_model = IntentionGymSettings
    default_tasks = str(DEFAULT_VAL_PARQUET)

    def __call__(
        self,
        *,
        task: Task,
        simulator: Simulator,
        settings: dict[str, Any] | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> IntentionGymEnv:
        cfg = parse_settings(settings)
        spec = resolve_task(task, _bank(cfg))
        return IntentionGymEnv(task=task, spec=spec, simulator=simulator, settings=cfg, seed=seed)

    def validate_task(self, task: Task, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Raise a ``ValueError`` or pydantic error naming the field when ``task`` cannot run."""
        resolve_task(task, _bank(parse_settings(settings)))


make_env = IntentionGymFactory()
