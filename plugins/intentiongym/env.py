"""The IntentionGym environment: one episode of clarifying questions about one vague request.

Semantics and, by default, the protocol around them follow UserRL's IntentionGym (its
``intention_env.py``, ``prompts.py`` and the ``interact_with_env`` tool), so scores compare:

- ``action`` (a clarifying question): the simulated user replies and the judge decides which
  still-missing details the question covers, in two concurrent simulator calls; the turn reward
  comes from :func:`~userrl_plugins.intentiongym.rewards.turn_reward`.
- ``answer`` and ``search``: UserRL's tool tags them (``[answer]``, ``[search]``) and its
  environment evaluates the text exactly like a question, so this environment does the same.
- ``finish``: the episode ends with reward 0 and no simulator call.
- The episode also ends when every detail is covered or after ``max_turns`` steps (a finish
  counts as a step, as in UserRL).
- Every observation ends with ``Reward: <r>`` as UserRL's tool appends it
  (``reward_in_observation``).

Where userrl's earlier protocol is better for a purpose, it stays available as a setting
(``judge_format: numbered``, ``duplicate_indices: ignore``, ``user_sees_details: false``,
``reward_in_observation: false``); docs/environments.md says when to use which.

Unlike UserRL, a failed simulator call is never turned into a canned reply and reward 0: the
step comes back with ``status=SIMULATOR_FAILED`` and ``reward=None`` and the episode ends, so
the trainer can leave it out. A judge reply with no usable JSON is re-asked ``judge_retries``
times, then fails the step the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable

from pydantic import BaseModel, ConfigDict, Field

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
    UNUSABLE_REPLIES_KEY,
)
from userrl_plugins.env_settings import parse_env_settings
from userrl_plugins.intentiongym import prompts
from userrl_plugins.intentiongym.judge import Duplicates, JudgeFormat, JudgeReplyError, JudgeVerdict, parse_judge_reply
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
    judge_format: JudgeFormat = Field(
        "userrl",
        description="How the judge answers: 'userrl' = details listed from 0, {analysis, is_task_related, "
        "covered_detail_indices} (UserRL); 'numbered' = details numbered from 1, {\"covered\": [...]}.",
    )
    duplicate_indices: Duplicates = Field(
        "count",
        description="A detail index the judge repeats: 'count' = each repeat counts as one more covered detail "
        "and costs multi_detail_penalty (UserRL); 'ignore' = counted once.",
    )
    user_sees_details: bool = Field(
        True,
        description="Show the simulated user every missing detail with its example answers, so it answers with "
        "a consistent concrete value (UserRL); false = the request text only.",
    )
    reward_in_observation: bool = Field(
        True, description="Append 'Reward: <r>' to every observation the agent sees, as UserRL's tool does."
    )


def parse_settings(settings: dict[str, Any] | IntentionGymSettings | None) -> IntentionGymSettings:
    return parse_env_settings(IntentionGymSettings, settings, SETTINGS_KEY)


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
        # the parts of the simulator prompts that stay the same for the whole episode
        self._reply_system = prompts.reply_system(spec, sees_details=settings.user_sees_details)
        self._detail_texts = {id(d): prompts.judge_detail_text(d) for d in spec.missing_details}
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
        self.duplicates = 0
        self.unrelated = 0
        self.judge_reasks = 0
        self._unusable_replies = 0  # judge replies of the current step that could not be parsed

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
            "judge/duplicates": float(self.duplicates),
            "judge/unrelated": float(self.unrelated),
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
        observation = self._observe(
            f"Conversation ended. {len(self.covered)} of {total} missing details were clarified.", 0.0
        )
        return StepResult(observation=observation, reward=0.0, done=True, info=self._info([], "finish"))

    def _observe(self, text: str, reward: float) -> str:
        return prompts.with_reward(text, reward) if self.settings.reward_in_observation else text

    async def _ask(self, question: str) -> StepResult:
        self.questions += 1
        cfg = self.settings
        shown = prompts.labelled_details(self.remaining, cfg.judge_format)
        history = self.history[-cfg.history_turns:] if cfg.history_turns else []
        context = prompts.request_context(
            self.spec, question, shown, judge_format=cfg.judge_format, turn=self.questions, seed=self.seed
        )
        reply_request = SimulatorRequest(
            purpose="reply",
            messages=prompts.reply_messages(self.spec, question, history, sees_details=cfg.user_sees_details,
                                            system=self._reply_system),
            context=context,
            response_format="text",
        )
        judge_request = SimulatorRequest(
            purpose="judge",
            messages=prompts.judge_messages(self.spec, question, history, shown, cfg.judge_format,
                                            detail_texts=self._detail_texts),
            context=context,
            response_format="json",
        )
        self._unusable_replies = 0
        reply, judged = await _both(self.simulator.complete(reply_request),
                                    self._judge(judge_request, {label for label, _ in shown}))
        for outcome in (reply, judged):
            if isinstance(outcome, (SimulatorError, _JudgeFailed)):
                return self._fail(str(outcome))
            if isinstance(outcome, BaseException):
                raise outcome
        verdict, judge_calls = judged
        self.out_of_range += verdict.out_of_range
        self.duplicates += verdict.duplicates
        self.unrelated += not verdict.task_related

        by_label = dict(shown)
        # One entry per covered index the judge gave; with duplicate_indices=count a repeated
        # index is here twice, as in UserRL (it costs one more multi_detail_penalty).
        rewarded = [by_label[label] for label in verdict.covered]
        newly = [by_label[label] for label in dict.fromkeys(verdict.covered)]
        self.remaining = [d for label, d in shown if label not in verdict.covered]
        self.covered.extend(newly)
        reward = turn_reward(
            [d.importance for d in rewarded],
            step_penalty=cfg.step_penalty,
            multi_detail_penalty=cfg.multi_detail_penalty,
        )
        self.rewards.append(reward)
        text = reply.text.strip()
        self.history.append((question, text))

        end_reason = None
        if not self.remaining:
            end_reason = "all_covered"
        elif self.steps >= cfg.max_turns:
            end_reason = "max_turns"
        self.done = end_reason is not None
        info = self._info(newly, end_reason)
        info["judge/out_of_range"] = verdict.out_of_range
        info["judge/duplicates"] = verdict.duplicates
        info["judge/task_related"] = verdict.task_related
        info["simulator/calls"] = 1 + judge_calls
        info[UNUSABLE_REPLIES_KEY] = self._unusable_replies
        return StepResult(observation=self._observe(text, reward), reward=reward, done=self.done, info=info)

    async def _judge(self, request: SimulatorRequest, labels: set[int]) -> tuple[JudgeVerdict, int]:
        """Ask the judge, re-asking on an unusable reply; returns the verdict and the calls made."""
        cfg = self.settings
        problem = ""
        for attempt in range(cfg.judge_retries + 1):
            if attempt:
                self.judge_reasks += 1
            response = await self.simulator.complete(request)
            try:
                verdict = parse_judge_reply(
                    response.text, labels, judge_format=cfg.judge_format, duplicates=cfg.duplicate_indices
                )
                return verdict, attempt + 1
            except JudgeReplyError as exc:
                self._unusable_replies += 1
                problem = str(exc)
                request = SimulatorRequest(
                    purpose="judge",
                    messages=prompts.judge_reask_messages(request.messages, response.text, problem, cfg.judge_format),
                    context=request.context,
                    response_format="json",
                )
        raise _JudgeFailed(
            f"judge gave no usable verdict after {cfg.judge_retries + 1} attempt(s): {problem}"
        )

    def _fail(self, error: str) -> StepResult:
        self.done = True
        self.failed = True
        info = self._info([], "failed")
        info[UNUSABLE_REPLIES_KEY] = self._unusable_replies
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
        if newly:  # shown under the turn in the report's transcripts
            info["notes"] = ["Details covered this turn: " + "; ".join(d.description for d in newly)]
        if end_reason:
            info["end_reason"] = end_reason
        return info


class IntentionGymFactory:
    """The registered ``IntentionGym`` factory: builds episodes, validates dataset rows.

    ``default_tasks`` is the shipped UserRL validation split (40 rows), used by
    ``userrl simulate`` when no task file is given.
    """

    settings_model = IntentionGymSettings
    report_metrics = {"coverage": "cover"}  # shown in the console step row and userrl eval
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


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Both results (or their exceptions), the two running at the same time: ``gather`` with
    ``return_exceptions=True`` with one new task instead of two (once per episode-turn).
    Cancellation and Ctrl-C are not caught; the other call is then cancelled."""
    started = asyncio.ensure_future(first)
    try:
        try:
            second_result: Any = await second
        except Exception as exc:
            second_result = exc
        try:
            first_result: Any = await started
        except Exception as exc:
            first_result = exc
    except BaseException:
        started.cancel()
        raise
    return first_result, second_result
