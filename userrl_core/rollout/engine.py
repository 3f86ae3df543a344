"""The async multi-turn rollout engine: tasks × n samples in, finished token-space episodes out.

Two modes (``rollout.mode``):

* ``async`` (the default): every episode is its own task and runs at its own pace: generate,
  parse, environment step, generate, ... until it ends. Each turn is its own generate request
  (at most ``rollout.policy_concurrency`` in flight); a continuous-batching backend (SGLang)
  takes them as they come, the transformers backend merges those that arrive close together
  (:mod:`userrl_core.rollout.batcher`). An episode waiting on a slow simulator call holds up no
  other episode, so a step costs about the slowest episode's own time, not the sum over turns
  of the slowest call.
* ``sync``: all episodes advance turn by turn together (UserRL's way). At each turn the policy
  generates for every live episode in one batch (chunked by ``rollout.generation_batch_size``);
  then all environment steps of the turn run concurrently; the next turn waits for the slowest.

In both modes environment steps (simulator and judge calls) run at most
``simulator.max_concurrency`` at a time, and the token bookkeeping, masks, seeds of the
environments, failure handling and metrics are the same. Episodes end independently: the
environment says done (``finish``, all details covered, ...), ``rollout.max_turns`` is reached,
the next turn would not fit ``rollout.max_episode_tokens``, the reply had no action
(``rollout.on_no_action: end``), a simulator call failed (the episode is then ``FAILED``), or
the environment's own code broke: its factory, ``reset()``, ``step()`` or ``metrics()`` raised, or
a step returned something that is not a ``StepResult`` with a finite number as reward (the
episode is then ``ENV_ERROR``, logged with the environment and the task). The trainer leaves
both kinds out of the update and counts them. Results come back ordered by group, then sample,
in both modes.

The recipe's ``rollout.system_prompt`` is applied to the opening messages ``reset()`` returns
(:func:`userrl_core.rollout.env_contract.opening_messages`, the rule ``userrl simulate`` shares).

Token bookkeeping is in :mod:`userrl_core.rollout.tokens`, action parsing in
:mod:`userrl_core.rollout.actions`, metrics in :mod:`userrl_core.rollout.summary`.
docs/rollout.md explains the whole path from a reply to tokens and masks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from userrl_core.registry import Kind, Registry
from userrl_core.rollout.actions import INTERACT_WITH_ENV_TOOL, error_message, parse_reply, reminder_message
from userrl_core.rollout.env_contract import bad_reward, chat_messages, finite_reward, opening_messages
from userrl_core.rollout.progress import ENVIRONMENT, GENERATE, CountedSimulator, ProgressTally, RolloutProgress, busy
from userrl_core.rollout.summary import (
    ENV_ERROR_KEY,
    SIMULATOR_ERROR_KEY,
    RolloutCounters,
    rollout_metrics,
)
from userrl_core.rollout.gc_pause import rollout_collections
from userrl_core.rollout.tokens import ChatTokens
from userrl_core.types import (
    Action,
    Environment,
    Episode,
    EpisodeStatus,
    GenerationRequest,
    GenerationResult,
    Message,
    RolloutBackend,
    Simulator,
    SimulatorError,
    StepResult,
    StepStatus,
    Task,
    Turn,
)

RETOKENIZATION_CHECKS = 32


def retokenization_sample(episodes: int) -> range:
    """The episodes (indices) whose held ids are compared with a fresh rendering: every one up to
    :data:`RETOKENIZATION_CHECKS`, else that many evenly spaced. A check renders and tokenises
    the whole conversation again (a few ms for a long one, as much client CPU as all of that
    episode's turns together); a drift comes from the template or the tokenizer, the same for
    every episode, so an even sample measures the rate at a bounded cost."""
    stride = -(-episodes // RETOKENIZATION_CHECKS)
    return range(0, episodes, max(1, stride))


log = logging.getLogger("userrl")


@dataclass
class RolloutResult:
    """The episodes of one rollout (ordered by group, then sample) and its metrics."""

    episodes: list[Episode]
    metrics: dict[str, float]


@dataclass
class _Live:
    """An episode while it runs: the growing token arrays and its environment."""

    episode: Episode
    env: Environment | None  # None when the factory raised (the episode is then an env error)
    logprobs: list[float] | None
    progress: RolloutProgress  # the rollout's progress reporter
    finished: bool = False
    turn_closed: bool = True  # the last sampled turn ended with the end-of-turn token
    feedback: Message | None = None  # the message to append before the next turn
    # (ids, messages) held after the latest appended environment message: checked against a
    # fresh rendering once, when the episode is over (a mismatch anywhere shows there too)
    check_point: tuple[int, int] | None = None
    # this episode's own view of the simulator (it sums the seconds of the calls its steps make)
    simulator: CountedSimulator | None = None
    generate_s: float = 0.0  # seconds waiting for the policy's generate (its slot included)
    env_s: float = 0.0  # seconds in reset() and step(), simulator calls included

    @property
    def ids(self) -> list[int]:
        return self.episode.token_ids


class _BusyClock:
    """Wall time during which at least one of the operations it wraps was running (the async
    mode's ``timing_s/generate`` and ``timing_s/env``: comparable to the sync mode's phases)."""

    __slots__ = ("running", "since", "total")

    def __init__(self) -> None:
        self.running = 0
        self.since = 0.0
        self.total = 0.0

    def __enter__(self) -> None:
        if self.running == 0:
            self.since = time.perf_counter()
        self.running += 1

    def __exit__(self, *exc: Any) -> None:
        self.running -= 1
        if self.running == 0:
            self.total += time.perf_counter() - self.since


@dataclass
class _Limits:
    """What the async mode's episodes share: the simulator and policy bounds and the clocks."""

    env: asyncio.Semaphore
    policy: asyncio.Semaphore | None
    generating: _BusyClock
    stepping: _BusyClock


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from a tuple of ints and strings (same inputs, same seed, on every
    machine and Python). An unkeyed BLAKE2b digest: about 1 us, where seeding a ``random.Random``
    from the same text cost about 10 us, once per episode-turn."""
    return _seed_of_text(":".join(map(str, parts)))


def _seed_of_text(text: str) -> int:
    """:func:`derive_seed` of the parts whose ``":"``-joined text is ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


class RolloutEngine:
    """Runs episodes for a batch of tasks with one policy backend and one simulator."""

    def __init__(self, backend: RolloutBackend, registry: Registry, simulator: Simulator | None,
                 config: Any) -> None:
        """``simulator`` is None in a run whose environments all declare ``needs_simulator = False``."""
        self.backend = backend
        self.registry = registry
        self.simulator = simulator
        self.config = config
        self.settings = config.rollout
        tool_mode = self.settings.action_format == "tool_call"
        self.tokens = ChatTokens(
            backend.tokenizer,
            tools=[INTERACT_WITH_ENV_TOOL] if tool_mode else None,
            chat_template=config.model.chat_template,
        )
        self.observation_role = "tool" if tool_mode and self.tokens.supports_tool_role else "user"
        self._closing = self.tokens.closing_ids()
        self._stops = frozenset(self.tokens.stop_token_ids)

    # ---------------------------------------------------------------------------------------
    # The turn loop
    # ---------------------------------------------------------------------------------------

    async def run(self, tasks: list[Task], n: int | None = None, *, seed: int,
                  validation: bool = False, progress: RolloutProgress | None = None) -> RolloutResult:
        """Run ``n`` episodes of every task (``rollout.n``, or ``rollout.val_n`` when
        ``validation``); episode ``group`` is the task's index in ``tasks``. ``progress`` hears
        what happens while it runs (:mod:`userrl_core.rollout.progress`)."""
        if n is None:
            n = self.settings.val_n if validation else self.settings.n
        started = time.perf_counter()
        counters = RolloutCounters(mode=self.settings.mode)
        progress = progress if progress is not None else ProgressTally()
        progress.rollout_started(len(tasks) * n)
        live = self._create(tasks, n, seed, progress)
        sampling = self._sampling(validation)
        with rollout_collections():
            if self.settings.mode == "sync":
                await self._run_in_lockstep(live, sampling, seed, validation, counters)
            else:
                await self._run_each_episode(live, sampling, seed, validation, counters)
        checked = retokenization_sample(len(live))
        for index, state in enumerate(live):
            self._collect_metrics(state)
            simulator_s = state.simulator.seconds if state.simulator is not None else 0.0
            counters.add_episode_time(state.episode.task.data_source, state.generate_s, simulator_s,
                                      max(state.env_s - simulator_s, 0.0))
            if index in checked:
                counters.checked_episodes += 1
                counters.mismatched_episodes += self._retokenization_differs(state)
        counters.total_s = time.perf_counter() - started
        episodes = [s.episode for s in live]
        return RolloutResult(episodes=episodes, metrics=rollout_metrics(episodes, counters))

    def opening_length(self, messages: list[Message]) -> int:
        """Tokens of an opening as the policy sees it (system prompt and chat template applied)."""
        return len(self.tokens.prompt_ids(opening_messages(messages, self.settings.system_prompt)))

    def _sampling(self, validation: bool) -> dict[str, Any]:
        """The generate-request fields that are the same for every call of one run."""
        temperature = self.settings.val_temperature if validation else self.settings.temperature
        return {
            "max_new_tokens": self.settings.max_new_tokens,
            "temperature": temperature,
            "top_p": 1.0 if validation else self.settings.top_p,
            "do_sample": temperature > 0,
            "stop_token_ids": list(self.tokens.stop_token_ids),
        }

    # ---------------------------------------------------------------------------------------
    # async: every episode its own task
    # ---------------------------------------------------------------------------------------

    async def _run_each_episode(self, live: list[_Live], sampling: dict[str, Any], seed: int, validation: bool,
                                counters: RolloutCounters) -> None:
        """Run every episode as its own task. Simulator failures and environment errors end only
        their episode; any other error (the backend's, the engine's) cancels the others and is
        raised."""
        limits = _Limits(
            env=asyncio.Semaphore(self.config.simulator.max_concurrency),
            policy=asyncio.Semaphore(self.settings.policy_concurrency) if self.settings.policy_concurrency else None,
            generating=_BusyClock(), stepping=_BusyClock(),
        )
        tag = "validation" if validation else "train"
        runs = [asyncio.ensure_future(self._play(state, sampling, (seed, tag), limits, counters)) for state in live]
        try:
            await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            counters.generate_s += limits.generating.total
            counters.env_s += limits.stepping.total
        for run in runs:
            if not run.cancelled() and run.exception() is not None:
                raise run.exception()

    async def _play(self, state: _Live, sampling: dict[str, Any], seed_parts: tuple[Any, ...], limits: "_Limits",
                    counters: RolloutCounters) -> None:
        """One episode from reset to its end."""
        if state.env is None:  # its factory failed: already ended as ENV_ERROR
            return
        self._start(state, await self._reset(state))
        episode = state.episode
        # derive_seed(*seed_parts, turn, group, sample), its text built around the turn once
        seed_head, seed_tail = "".join(f"{p}:" for p in seed_parts), f":{episode.group}:{episode.sample}"
        turn = 0
        while not state.finished:
            if not self._fits_next_turn(len(state.ids)):
                self._finish(state, "token_budget")
                break
            state.progress.turn_started(turn)
            request = GenerationRequest(
                prompts=[list(state.ids)], seed=_seed_of_text(f"{seed_head}{turn}{seed_tail}"),
                **sampling,
            )
            waiting = time.perf_counter()
            with limits.generating, busy(state.progress, GENERATE, 1):
                if limits.policy is None:
                    result = await self.backend.generate(request)
                else:
                    async with limits.policy:
                        result = await self.backend.generate(request)
            state.generate_s += time.perf_counter() - waiting
            counters.generate_calls += 1
            ((ids, logprobs),) = self._read_result(result, 1)
            action = self._take_turn(state, ids, logprobs, counters)
            if action is not None:
                with limits.stepping, busy(state.progress, ENVIRONMENT, 1):
                    outcome = await self._step(state, action, limits.env)
                self._apply_step(state, outcome)
            if not state.finished:
                self._continue(state)
            turn += 1

    # ---------------------------------------------------------------------------------------
    # sync: all episodes turn by turn
    # ---------------------------------------------------------------------------------------

    async def _run_in_lockstep(self, live: list[_Live], sampling: dict[str, Any], seed: int, validation: bool,
                               counters: RolloutCounters) -> None:
        starting = [s for s in live if s.env is not None]  # the others' factory failed
        openings = await asyncio.gather(*(self._reset(s) for s in starting), return_exceptions=True)
        for state, opening in zip(starting, openings):
            self._start(state, opening)
        slots = asyncio.Semaphore(self.config.simulator.max_concurrency)
        turn = 0
        while True:
            for state in live:
                if not state.finished and not self._fits_next_turn(len(state.ids)):
                    self._finish(state, "token_budget")
            active = [s for s in live if not s.finished]
            if not active:
                break
            progress = active[0].progress
            progress.turn_started(turn)
            with busy(progress, GENERATE, len(active)):
                sampled = await self._generate(active, turn, sampling, seed, validation, counters)
            stepping: list[tuple[_Live, Action]] = []
            for state, (ids, logprobs) in zip(active, sampled):
                action = self._take_turn(state, ids, logprobs, counters)
                if action is not None:
                    stepping.append((state, action))
            clock = time.perf_counter()
            with busy(progress, ENVIRONMENT, len(stepping)):
                outcomes = await asyncio.gather(*(self._step(s, a, slots) for s, a in stepping))
            counters.env_s += time.perf_counter() - clock
            for (state, _), outcome in zip(stepping, outcomes):
                self._apply_step(state, outcome)
            for state in active:
                if not state.finished:
                    self._continue(state)
            turn += 1

    def _create(self, tasks: list[Task], n: int, seed: int, progress: RolloutProgress) -> list[_Live]:
        factories = {}
        for task in tasks:
            if task.env_name not in factories:
                where = f"{task.source or 'task ' + repr(task.id)}: env_name"
                factories[task.env_name] = self.registry.get(Kind.ENVIRONMENT, task.env_name, key_path=where)
        live = []
        for group, task in enumerate(tasks):
            settings = dict(self.config.env.get(task.env_name, {}))
            for sample in range(n):
                episode = Episode(task=task, group=group, sample=sample, token_ids=[], loss_mask=[],
                                  prompt_length=0, turns=[], messages=[])
                state = _Live(episode=episode, env=None, logprobs=None, progress=progress)
                if self.simulator is not None:
                    state.simulator = CountedSimulator(self.simulator, progress)
                live.append(state)
                try:
                    state.env = factories[task.env_name](
                        task=task, simulator=state.simulator, settings=settings, seed=derive_seed(seed, group, sample)
                    )
                except Exception as exc:  # third-party code: one broken episode, not a dead run
                    self._env_error(state, "factory", f"raised {_describe(exc)}")
        return live

    def _start(self, state: _Live, opening: Any) -> None:
        """Take an environment's reset result: the opening messages, a simulator failure, or an
        error of the environment's own (the episode then ends as ``ENV_ERROR``)."""
        if isinstance(opening, SimulatorError):
            self._fail(state, str(opening))
            return
        if isinstance(opening, Exception):
            self._env_error(state, "reset", f"raised {_describe(opening)}")
            return
        if isinstance(opening, BaseException):  # Ctrl-C, cancellation: not the environment's fault
            raise opening
        messages = chat_messages(opening)
        if messages is None:
            self._env_error(state, "reset", f"returned {opening!r:.80}, not a non-empty list of chat messages")
            return
        prompt = self.settings.system_prompts.get(state.episode.task.env_name, self.settings.system_prompt)
        state.episode.messages = opening_messages(messages, prompt)
        if not state.episode.task.prompt:  # the environment wrote the opening: checked here
            length = len(self.tokens.prompt_ids(state.episode.messages))
            limit = self.config.data.max_prompt_length
            if length > limit:
                self._env_error(state, "reset", f"wrote an opening of {length} tokens, longer than "
                                f"data.max_prompt_length ({limit})")
                return
        state.episode.token_ids = self.tokens.prompt_ids(state.episode.messages)
        state.episode.loss_mask = [0] * len(state.ids)
        state.episode.prompt_length = len(state.ids)
        state.logprobs = [0.0] * len(state.ids)

    def _fits_next_turn(self, length: int) -> bool:
        """Room for a full turn plus the end-of-turn ids a cut-off turn gets."""
        return length + self.settings.max_new_tokens + len(self._closing) <= self.settings.max_episode_tokens

    async def _generate(self, active: list[_Live], turn: int, sampling: dict[str, Any], seed: int,
                        validation: bool, counters: RolloutCounters) -> list[tuple[list[int], list[float] | None]]:
        size = self.settings.generation_batch_size or len(active)
        outputs: list[tuple[list[int], list[float] | None]] = []
        clock = time.perf_counter()
        for chunk_index, start in enumerate(range(0, len(active), size)):
            chunk = active[start:start + size]
            request = GenerationRequest(
                prompts=[list(s.ids) for s in chunk],
                seed=derive_seed(seed, "validation" if validation else "train", turn, chunk_index),
                **sampling,
            )
            waiting = time.perf_counter()
            result = await self.backend.generate(request)
            waited = time.perf_counter() - waiting
            for state in chunk:  # every episode of the chunk waited for the whole batch
                state.generate_s += waited
            counters.generate_calls += 1
            outputs.extend(self._read_result(result, len(chunk)))
        counters.generate_s += time.perf_counter() - clock
        return outputs

    def _read_result(self, result: GenerationResult, expected: int) -> list[tuple[list[int], list[float] | None]]:
        if len(result.token_ids) != expected:
            raise RuntimeError(f"the rollout backend returned {len(result.token_ids)} sequences for "
                               f"{expected} prompts")
        outputs = []
        for index, ids in enumerate(result.token_ids):
            logprobs = result.logprobs[index] if result.logprobs is not None else None
            outputs.append(self._cut_at_stop(list(ids), logprobs))
        return outputs

    def _cut_at_stop(self, ids: list[int], logprobs: list[float] | None) -> tuple[list[int], list[float] | None]:
        """Keep ids up to and including the first stop token (a backend may pad after it)."""
        for index, token in enumerate(ids):
            if token in self._stops:
                ids = ids[: index + 1]
                break
        if logprobs is not None:
            if len(logprobs) < len(ids):
                raise RuntimeError(f"the rollout backend returned {len(logprobs)} log-probs for {len(ids)} tokens")
            logprobs = [float(x) for x in logprobs[: len(ids)]]
        return ids, logprobs

    # ---------------------------------------------------------------------------------------
    # One turn of one episode
    # ---------------------------------------------------------------------------------------

    def _take_turn(self, state: _Live, sampled: list[int], logprobs: list[float] | None,
                   counters: RolloutCounters) -> Action | None:
        """Append the sampled ids, parse them, and return the action to step (if any)."""
        episode = state.episode
        start = len(episode.token_ids)
        episode.token_ids.extend(sampled)
        episode.loss_mask.extend([1] * len(sampled))
        if logprobs is None or state.logprobs is None:
            state.logprobs = None
        else:
            state.logprobs.extend(logprobs)
        eot = self.tokens.end_of_turn_ids
        state.turn_closed = len(sampled) >= len(eot) and sampled[-len(eot):] == eot
        body = sampled[: -len(eot)] if state.turn_closed else sampled
        if not self.tokens.ends_turn(sampled):
            counters.truncated_turns += 1
        content = self.tokens.decode(body)
        episode.messages.append({"role": "assistant", "content": content})
        visible_ids = body[:-1] if body and body[-1] in self._stops else body
        text = content if visible_ids is body else self.tokens.decode(visible_ids)
        parsed = parse_reply(text, action_format=self.settings.action_format)
        turn = Turn(start=start, end=start + len(sampled), text=text, action=parsed.action, reward=0.0)
        episode.turns.append(turn)
        if parsed.kind == "action":
            return parsed.action
        if parsed.kind == "invalid":
            turn.invalid = True
            turn.info = {"error": parsed.error}
            turn.observation = error_message(parsed)
            state.feedback = {"role": self.observation_role, "content": turn.observation}
        else:
            turn.no_action = True
            turn.info = {"error": parsed.error}
            if self.settings.on_no_action == "end":
                self._finish(state, "no_action")
            else:
                turn.observation = reminder_message(self.settings.action_format)
                state.feedback = {"role": "user", "content": turn.observation}
        return None

    async def _reset(self, state: _Live) -> Any:
        """The environment's ``reset()`` result, or the exception it raised (for :meth:`_start`),
        its seconds added to the episode's environment time."""
        started = time.perf_counter()
        try:
            return await state.env.reset()
        except Exception as exc:
            return exc
        finally:
            state.env_s += time.perf_counter() - started

    async def _step(self, state: _Live, action: Action, slots: asyncio.Semaphore) -> StepResult | Exception:
        """One environment step within the simulator bound (its seconds, not the wait for a
        slot, added to the episode's environment time). A simulator failure or an error of the
        environment's own is returned (it ends only this episode); Ctrl-C and cancellation
        propagate."""
        async with slots:
            started = time.perf_counter()
            try:
                return await state.env.step(action)
            except Exception as exc:
                return exc
            finally:
                state.env_s += time.perf_counter() - started

    def _apply_step(self, state: _Live, outcome: StepResult | Exception) -> None:
        turn = state.episode.turns[-1]
        if isinstance(outcome, SimulatorError):
            turn.info = {SIMULATOR_ERROR_KEY: str(outcome)}
            self._fail(state, str(outcome))
            return
        if isinstance(outcome, Exception):
            self._env_error(state, "step", f"raised {_describe(outcome)}")
            return
        if not isinstance(outcome, StepResult):
            self._env_error(state, "step", f"returned {type(outcome).__name__}, not a StepResult")
            return
        turn.info = dict(outcome.info) if isinstance(outcome.info, dict) else {}
        turn.observation = outcome.observation
        if outcome.status is not StepStatus.OK:
            message = outcome.error or f"simulator step status {outcome.status.value}"
            turn.info[SIMULATOR_ERROR_KEY] = message
            self._fail(state, message)
            return
        reward = finite_reward(outcome.reward)
        if reward is None:
            self._env_error(state, "step", bad_reward(outcome.reward))
            return
        turn.reward = reward
        if outcome.done:
            reason = outcome.info.get("end_reason")
            self._finish(state, reason if isinstance(reason, str) and reason else "done")
            return
        state.feedback = {"role": self.observation_role, "content": outcome.observation}

    def _continue(self, state: _Live) -> None:
        """After a turn that did not end the episode: stop at max_turns, else append the
        feedback message's tokens (masked out) for the next turn."""
        episode = state.episode
        if len(episode.turns) >= self.settings.max_turns:
            self._finish(state, "max_turns")
            return
        if state.feedback is None:
            raise RuntimeError(self._where(state, "turn") + " left no message for the next turn")
        appended = self.tokens.continuation_ids(episode.messages, [state.feedback], turn_closed=state.turn_closed)
        if not self._fits_next_turn(len(episode.token_ids) + len(appended)):
            self._finish(state, "token_budget")
            return
        self._append_unsampled(state, appended)
        episode.messages.append(state.feedback)
        state.feedback = None
        state.turn_closed = True
        state.check_point = (len(episode.token_ids), len(episode.messages))

    # ---------------------------------------------------------------------------------------
    # Endings
    # ---------------------------------------------------------------------------------------

    def _append_unsampled(self, state: _Live, ids: list[int]) -> None:
        state.episode.token_ids.extend(ids)
        state.episode.loss_mask.extend([0] * len(ids))
        if state.logprobs is not None:
            state.logprobs.extend([0.0] * len(ids))

    def _finish(self, state: _Live, reason: str) -> None:
        if not state.turn_closed:  # a turn cut off by the length cap still gets its end-of-turn ids
            self._append_unsampled(state, self._closing)
            state.turn_closed = True
        if not state.finished:
            state.progress.episode_finished(failed=state.episode.status is not EpisodeStatus.OK)
        state.finished = True
        state.episode.end_reason = reason

    def _fail(self, state: _Live, message: str) -> None:
        state.episode.status = EpisodeStatus.FAILED
        state.episode.error = message
        self._finish(state, "failed")

    def _env_error(self, state: _Live, call: str, problem: str) -> None:
        """The environment's own code broke in ``call``: this episode ends as ``ENV_ERROR`` (left out
        of the update, counted in ``rollout/env_errors``); the run goes on."""
        message = f"{self._where(state, call)} {problem}"
        log.warning("episode failed: %s", message)
        if state.episode.turns:
            state.episode.turns[-1].info[ENV_ERROR_KEY] = message
        state.episode.status = EpisodeStatus.ENV_ERROR
        state.episode.error = message
        self._finish(state, "env_error")

    def _retokenization_differs(self, state: _Live) -> bool:
        """Whether the ids held at the episode's last appended environment message differ from a
        fresh rendering of its messages up to there. One check per episode: a template that
        re-renders history, or sampled ids that are not the canonical tokenisation of their text,
        anywhere before that point, shows in the whole rendering too."""
        if state.check_point is None:
            return False
        n_ids, n_messages = state.check_point
        episode = state.episode
        return not self.tokens.matches_rendering(episode.token_ids[:n_ids], episode.messages[:n_messages])

    def _collect_metrics(self, state: _Live) -> None:
        episode = state.episode
        episode.rollout_logprobs = state.logprobs
        metrics: dict[str, float] = {}
        if state.env is not None and episode.status is EpisodeStatus.OK:
            try:
                reported = state.env.metrics()
                for name, value in dict(reported).items():
                    number = finite_reward(value)
                    if number is None:
                        raise ValueError(f"non-numeric or non-finite {name}={value!r}")
                    metrics[str(name)] = number
            except Exception as exc:
                self._env_error(state, "metrics", f"failed: {_describe(exc)}")
                metrics = {}
        metrics.setdefault("score", float(sum(episode.turn_rewards)))
        episode.metrics = metrics

    @staticmethod
    def _where(state: _Live, call: str) -> str:
        task = state.episode.task
        where = f" ({task.source})" if task.source else ""
        return f"environment {task.env_name!r} {call}() for task {task.id!r}{where}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
