"""The SearchGym environment: answer a multi-hop question, searching the web at most five times.

Semantics follow UserRL's SearchGym (``gyms/SearchGym/searchgym/env/search_env.py``), so scores
compare:

- ``search`` with a query: the search backend's results (``env.SearchGym.search``). From the
  sixth search on (``max_searches``), the search is refused with a message and still counts as a
  step. Reward 0.
- ``answer``: correct when it matches the reference after normalisation (letters and digits,
  lower-cased), else, with ``judge: llm`` (UserRL's training setting), when the simulator judges
  it correct. Correct: reward 1.0 and the episode ends; wrong: 0.0 and the agent may go on.
- ``action``: not a SearchGym move; a message, reward 0.
- ``finish``: ends the episode with reward 0. The episode also ends after ``max_turns`` steps.

Unlike UserRL, nothing failed becomes a result: a search API that fails after its retries, a
judge call that fails, or a judge reply with no usable verdict after ``judge_retries`` re-asks
fails the step (``status=SIMULATOR_FAILED``, ``reward=None``); the episode is left out of
training and counted (the search API is this gym's other side, like a simulator).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.errors import ConfigError
from userrl_core.types import Action, Message, Simulator, SimulatorError, SimulatorRequest, StepResult, StepStatus, Task
from userrl_plugins.env_settings import parse_env_settings
from userrl_plugins.searchgym.grading import JudgeReplyError, exact_match, judge_messages, parse_judgment, reask_messages
from userrl_plugins.searchgym.search import SearchBackend, SearchError, SearchSettings, build_backend
from userrl_plugins.searchgym.tasks import DEFAULT_QUESTIONS_FILE, DEFAULT_VAL_PARQUET, Question, QuestionBankError, resolve_task

SETTINGS_KEY = "env.SearchGym"
MAX_QUERY_CHARS = 400


class SearchGymSettings(BaseModel):
    """The recipe's ``env.SearchGym`` mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(15, ge=1, description="Steps per episode at most (UserRL: 15); rollout.max_turns also applies.")
    max_searches: int = Field(5, ge=0, description="Searches per episode at most (UserRL: 5).")
    judge: Literal["llm", "exact"] = Field(
        "llm", description="'llm': exact match, then the simulator judges (UserRL's training); 'exact': exact match only."
    )
    judge_retries: int = Field(2, ge=0, description="Re-asks when the judge's reply holds no Yes/No verdict.")
    search: SearchSettings = Field(default_factory=SearchSettings, description="The search backend.")
    questions_file: str | None = Field(None, description="JSON list of {id, question, answer}; the shipped file by default.")


def parse_settings(settings: dict[str, Any] | SearchGymSettings | None) -> SearchGymSettings:
    return parse_env_settings(SearchGymSettings, settings, SETTINGS_KEY)


class _StepFailed(Exception):
    """The search API or the judge failed; the step gets no reward."""


class SearchGymEnv:
    """One SearchGym episode (see the module docstring for the rules)."""

    def __init__(self, *, task: Task, spec: Question, simulator: Simulator | None, search: SearchBackend,
                 settings: SearchGymSettings):
        self.task = task
        self.spec = spec
        self.simulator = simulator
        self.backend = search
        self.settings = settings
        self._start()

    def _start(self) -> None:
        self.rewards: list[float] = []
        self.steps = 0
        self.done = False
        self.solved = False
        self.counts = {"searches": 0, "refused_searches": 0, "answers": 0, "exact_matches": 0, "judge_calls": 0,
                       "judge/reasks": 0, "invalid": 0}

    async def reset(self) -> list[Message]:
        self._start()
        if self.task.prompt:
            return [dict(m) for m in self.task.prompt]
        return [{"role": "user", "content": f"{self.spec.question}\nSearch step by step, then answer."}]

    async def step(self, action: Action) -> StepResult:
        if self.done:
            raise RuntimeError("SearchGym episode is over; call reset() first")
        self.steps += 1
        content = action.content.strip()
        try:
            if action.choice == "search":
                observation, reward, end = await self._search(content)
            elif action.choice == "answer":
                observation, reward, end = await self._answer(content)
            elif action.choice == "finish":
                observation, reward, end = "Episode finished.", 0.0, "finish"
            else:
                self.counts["invalid"] += 1
                observation, reward, end = "Use search with a query, or answer with your answer.", 0.0, None
        except (_StepFailed, SimulatorError, SearchError) as exc:
            self.done = True
            return StepResult(observation="", reward=None, done=True, info={"end_reason": "failed"},
                              status=StepStatus.SIMULATOR_FAILED, error=str(exc))
        if end is None and self.steps >= self.settings.max_turns:
            end = "max_turns"
        self.rewards.append(reward)
        self.done = end is not None
        info: dict[str, Any] = {"solved": self.solved, "searches": self.counts["searches"]}
        if end:
            info["end_reason"] = end
        return StepResult(observation=observation, reward=reward, done=self.done, info=info)

    def metrics(self) -> dict[str, float]:
        return {"score": float(sum(self.rewards)), "solved": float(self.solved), "turns": float(self.steps),
                **{name: float(value) for name, value in self.counts.items()}}

    # ------------------------------------------------------------------ actions

    async def _search(self, query: str) -> tuple[str, float, str | None]:
        self.counts["searches"] += 1
        if self.counts["searches"] > self.settings.max_searches:
            self.counts["refused_searches"] += 1
            return (f"You have used all {self.settings.max_searches} searches. Answer now; do not search again.",
                    0.0, None)
        if not query:
            return "The search query is empty. Search with a query.", 0.0, None
        return await self.backend.search(query[:MAX_QUERY_CHARS]), 0.0, None

    async def _answer(self, answer: str) -> tuple[str, float, str | None]:
        if not answer:
            return "The answer is empty. Answer with your answer.", 0.0, None
        self.counts["answers"] += 1
        correct = exact_match(answer, self.spec.answer)
        if correct:
            self.counts["exact_matches"] += 1
        elif self.settings.judge == "llm":
            correct = await self._judge(answer)
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        if correct:
            self.solved = True
            return f"Correct: {shown!r} is the answer.", 1.0, "solved"
        return f"Incorrect: {shown!r} is not the answer. You may search more or answer again.", 0.0, None

    async def _judge(self, answer: str) -> bool:
        if self.simulator is None:
            raise _StepFailed("env.SearchGym.judge is 'llm' but the run has no simulator")
        request = SimulatorRequest(
            purpose="judge", messages=judge_messages(self.spec.question, answer, self.spec.answer),
            context={"env": "SearchGym", "question": self.spec.question, "answer": answer,
                     "reference": self.spec.answer},
            response_format="json",
        )
        problem = ""
        for attempt in range(self.settings.judge_retries + 1):
            if attempt:
                self.counts["judge/reasks"] += 1
            self.counts["judge_calls"] += 1
            response = await self.simulator.complete(request)
            try:
                return parse_judgment(response.text)
            except JudgeReplyError as exc:
                problem = str(exc)
                request = SimulatorRequest(purpose="judge", messages=reask_messages(request.messages, response.text, problem),
                                           context=request.context, response_format="json")
        raise _StepFailed(f"judge gave no usable verdict after {self.settings.judge_retries + 1} attempt(s): {problem}")


def _question(task: Task, settings: SearchGymSettings) -> Question:
    try:
        return resolve_task(task, str(settings.questions_file or DEFAULT_QUESTIONS_FILE))
    except QuestionBankError as exc:
        if exc.field == "questions_file":
            raise ConfigError(f"{SETTINGS_KEY}.questions_file: {exc}") from None
        raise


class SearchGymFactory:
    """The registered ``SearchGym`` factory: builds episodes, validates dataset rows (and that the
    search API key is set, so a run stops before its first step when it is not).

    ``needs_simulator`` is true: the default ``judge: llm`` asks the simulator. ``default_tasks``
    is UserRL's Bamboogle split (125 rows), used by ``userrl simulate SearchGym``.
    """

    settings_model = SearchGymSettings
    needs_simulator = True
    default_tasks = str(DEFAULT_VAL_PARQUET)

    def __call__(self, *, task: Task, simulator: Simulator | None, settings: dict[str, Any] | None = None,
                 seed: int = 0, **kwargs: Any) -> SearchGymEnv:
        cfg = parse_settings(settings)
        return SearchGymEnv(task=task, spec=_question(task, cfg), simulator=simulator,
                            search=build_backend(cfg.search, f"{SETTINGS_KEY}.search"), settings=cfg)

    def validate_task(self, task: Task, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Check one row; with a run's settings (``settings`` given) also that the search key is set.

        Rows read without a run configuration (``settings`` is None: listing or checking a file)
        need no key: nothing will search.
        """
        cfg = parse_settings(settings)
        if settings is not None:
            build_backend(cfg.search, f"{SETTINGS_KEY}.search")
        _question(task, cfg)


make_env = SearchGymFactory()
