"""The data contracts shared by the core and every plugin.

Environments, simulators, backends and reward methods talk to each other only through these
types, so a plugin written against them keeps working when the core changes inside.
Callables that plugins implement accept ``**kwargs`` so that new keyword arguments can be
added later without breaking them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, runtime_checkable

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``."""

NO_SIMULATOR = "none"
"""``simulator.name: none``: the run builds no simulator; every environment it uses must declare
``needs_simulator = False`` on its factory (environment factories then get ``simulator=None``)."""


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One task of a dataset, routed to its environment plugin by ``env_name``.

    ``prompt`` holds the opening messages as stored in the dataset (verl/UserRL parquet:
    system + user). ``payload`` is what the environment needs to build an episode
    (for IntentionGym: the vague request and its missing details); its shape belongs to the
    environment plugin, which validates it.
    """

    id: str
    env_name: str
    data_source: str
    prompt: list[Message]
    payload: dict[str, Any]
    source: str = ""  # "file.parquet row 17", for error messages


# --------------------------------------------------------------------------------------------
# Actions and environment steps
# --------------------------------------------------------------------------------------------

ActionChoice = Literal["action", "search", "answer", "finish"]


@dataclass(frozen=True)
class Action:
    """What the agent does in one turn: UserRL's ``interact_with_env`` tool call."""

    choice: ActionChoice
    content: str


class StepStatus(str, enum.Enum):
    OK = "ok"
    SIMULATOR_FAILED = "simulator_failed"  # retries exhausted: no reward may be produced


UNUSABLE_REPLIES_KEY = "simulator/unusable_replies"
"""``StepResult.info`` key: simulator replies of this step the environment could not parse."""


@dataclass
class StepResult:
    """The environment's answer to one action.

    ``observation`` is the text the agent sees next (the simulated user's reply).
    ``reward`` is the turn reward: a finite ``float`` (or ``int``) when ``status`` is OK — a
    string, ``None``, a bool, NaN or infinity fails the episode as an environment error naming
    the environment and the task — and ``None`` when ``status`` is not OK, so that a failed
    simulator call can never turn into a reward. ``done`` ends the episode. ``info`` carries
    the environment's own per-step data (saved in transcripts); its ``notes`` (a list of short
    strings) are shown under the turn in the report's transcripts. ``error`` says why a step
    failed.

    Import it as ``from userrl_core.types import StepResult, StepStatus``; build it as
    ``StepResult(observation="Lower.", reward=0.0, done=False)`` or, after a simulator call
    failed, ``StepResult(observation="", reward=None, done=True,
    status=StepStatus.SIMULATOR_FAILED, error=str(exc))``.
    """

    observation: str
    reward: float | None
    done: bool
    info: dict[str, Any] = field(default_factory=dict)
    status: StepStatus = StepStatus.OK
    error: str | None = None


@runtime_checkable
class Environment(Protocol):
    """One episode of one task. Created per episode by an environment factory.

    ``reset`` returns the opening messages (usually ``task.prompt``; an environment writes its
    own when the task has none); the recipe's ``rollout.system_prompt`` is then applied to them.
    ``step`` is called once per valid agent action and returns a :class:`StepResult`.
    ``metrics`` returns the trajectory's float metrics at the end (IntentionGym: ``score``,
    ``score_max``, ``coverage``). An exception raised by any of the three (other than
    :class:`SimulatorError`) ends that episode as ``EpisodeStatus.ENV_ERROR``: it is logged with
    the environment and the task, counted in ``rollout/env_errors`` and left out of the update;
    the run goes on (the guard's ``env_error_spike`` rule stops it when too many episodes fail).
    """

    async def reset(self) -> list[Message]: ...

    async def step(self, action: Action) -> StepResult: ...

    def metrics(self) -> dict[str, float]: ...


class EnvironmentFactory(Protocol):
    """Builds an :class:`Environment` for one episode.

    Called as ``factory(task=..., simulator=..., settings=..., seed=...)`` where ``settings``
    is the recipe's ``env.<env_name>`` mapping (a plain dict, ``{}`` when the recipe has none;
    the plugin validates it) and ``seed`` makes the episode reproducible. ``simulator`` is
    ``None`` in a run without one.

    Optional attributes the core reads from the factory:

    - ``needs_simulator = False``: the environment never calls a simulator, so a run whose
      environments all say so builds none (``simulator.name: none`` is then allowed too);
    - ``validate_task(task, settings=None)``: called by the task loader for every row; a
      ``ValueError`` is reported with the file and row;
    - ``default_tasks``: a task file path, used by ``userrl simulate`` without ``--tasks``;
    - ``report_metrics``: ``{metric: short label}`` of the environment's own ``metrics()`` keys
      that the console's step row and ``userrl eval``'s summary show (e.g. ``{"coverage":
      "cover"}``); every metric is logged in ``metrics.jsonl`` either way.
    """

    def __call__(
        self, *, task: Task, simulator: "Simulator | None", settings: dict[str, Any], seed: int, **kwargs: Any
    ) -> Environment: ...


# --------------------------------------------------------------------------------------------
# User simulators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What a plugin factory needs on the machine for one run, declared by the factory as an
    optional attribute ``requirements(config) -> Requirements`` (``config``: the ``RunConfig``).
    The pre-flight (``userrl run``, ``--dry-run``, ``userrl doctor``) asks every factory the
    recipe names and reports what is missing before anything loads; it never names a plugin.

    - ``modules``: Python module -> install hint; each must be importable.
    - ``files``: recipe key -> path that must exist.
    - ``gpu_memory_fraction``: share of each training GPU this factory keeps for itself while
      training runs (a rollout engine colocated with the trainer); the dry run's memory
      estimate adds it.
    - ``why``: what needs them, for the message (``"ranks are placed with Ray"``).
    """

    modules: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    gpu_memory_fraction: float = 0.0
    why: str = ""


@dataclass(frozen=True)
class SimulatorRequest:
    """One call to a user simulator.

    ``purpose`` is ``"reply"`` (answer as the user) or ``"judge"`` (decide what a question
    covers). ``messages`` is the full prompt for a language-model simulator. ``context`` holds
    the same facts in structured form for simulators that are not language models (the
    embedded ``local`` simulator); language-model simulators must ignore it.
    ``response_format`` is ``"json"`` when the caller parses the reply as JSON.
    """

    purpose: Literal["reply", "judge"]
    messages: list[Message]
    context: dict[str, Any] = field(default_factory=dict)
    response_format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class SimulatorResponse:
    """The simulator's text plus what the call cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1


class SimulatorError(RuntimeError):
    """A simulator call failed after all retries. The turn gets no reward."""

    def __init__(self, simulator: str, message: str, attempts: int = 1):
        super().__init__(f"simulator {simulator!r} failed after {attempts} attempt(s): {message}")
        self.simulator = simulator
        self.attempts = attempts
        self.last_error = message


@runtime_checkable
class Simulator(Protocol):
    """A user simulator (and judge). Shared by all episodes of a run; must be safe to call
    concurrently. Retries, time-outs and the concurrency bound are its own business; after the
    last retry it raises :class:`SimulatorError`, never returns a made-up text.

    The core calls exactly these: ``complete`` (through the environments), ``stats()`` before
    and after every rollout (cumulative counters since the simulator was built, diffed into
    ``simulator/<counter>`` metrics: ``calls``, ``failures``, ``retries``, ``prompt_tokens``,
    ``completion_tokens``, ``cost_usd``, ``latency_s``; a counter it does not keep is left out
    and counts as 0) and ``aclose()`` once at the end of the run.
    """

    name: str

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse: ...

    def stats(self) -> dict[str, float]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Episodes (the unit the trainer consumes)
# --------------------------------------------------------------------------------------------


class EpisodeStatus(str, enum.Enum):
    OK = "ok"  # ended normally (finish, all covered, max_turns, token budget, no action)
    FAILED = "failed"  # a simulator call failed: excluded from training, counted in simulator/*
    ENV_ERROR = "env_error"  # the environment's code raised or returned something invalid:
    # excluded from training, counted in rollout/env_errors, named with its environment and task


@dataclass
class Turn:
    """One agent turn: the tokens it sampled and what the environment made of them.

    ``start``/``end`` index into :attr:`Episode.token_ids` (``end`` exclusive) and span exactly
    the sampled tokens of this turn.
    """

    start: int
    end: int
    text: str
    action: Action | None
    reward: float
    observation: str = ""
    invalid: bool = False  # unparsable or unknown action: no env step, reward 0
    no_action: bool = False  # no tool call at all
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """A finished multi-turn episode in token space.

    ``token_ids`` is the whole conversation exactly as the policy saw and sampled it;
    ``loss_mask[i]`` is 1 for tokens the policy sampled and 0 for prompt, environment and
    template tokens; ``rollout_logprobs`` holds the sampling log-probs of the masked tokens
    (0.0 elsewhere) when the backend provides them.
    """

    task: Task
    group: int  # index of the task within the step: GRPO groups never mix tasks
    sample: int  # index of this sample within its group (0 .. rollout.n - 1)
    token_ids: list[int]
    loss_mask: list[int]
    prompt_length: int
    turns: list[Turn]
    messages: list[Message]
    status: EpisodeStatus = EpisodeStatus.OK
    end_reason: str = ""  # finish | all_covered | max_turns | token_budget | no_action | failed | env_error
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    rollout_logprobs: list[float] | None = None

    @property
    def turn_rewards(self) -> list[float]:
        return [t.reward for t in self.turns]

    @property
    def response_length(self) -> int:
        """Every token after the opening prompt: the policy's turns and the environment's replies
        and template tokens between them (verl's ``response_length``)."""
        return len(self.token_ids) - self.prompt_length

    @property
    def policy_tokens(self) -> int:
        """The tokens the policy sampled (``sum(loss_mask)``)."""
        return int(sum(self.loss_mask))


# --------------------------------------------------------------------------------------------
# Reward methods (pure functions, registered through ``register_rewards``)
# --------------------------------------------------------------------------------------------

TurnCreditFn = Callable[..., Any]
"""``fn(rewards, turn_mask, *, gamma, **kwargs) -> credits``.

``rewards`` and ``turn_mask`` are float tensors ``[episodes, max_turns]`` (mask 1 for a real
turn); returns credits of the same shape (0 where the mask is 0)."""

TrajectoryScoreFn = Callable[..., Any]
"""``fn(rewards, turn_mask, *, gamma, **kwargs) -> scores``: a float tensor ``[episodes]``."""


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """Continue each sequence by one assistant turn. ``prompts`` are token id lists."""

    prompts: list[list[int]]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    stop_token_ids: list[int] = field(default_factory=list)  # empty: the tokenizer's eos token
    seed: int | None = None  # seeds this call's sampling without touching the global RNG stream
    return_logprobs: bool = True  # per-token sampling log-probs (costs batch x tokens x vocab memory)


@dataclass
class GenerationResult:
    """Sampled continuation ids per prompt (stop token included when one was hit) and their
    per-token log-probs under the sampling distribution when available."""

    token_ids: list[list[int]]
    logprobs: list[list[float]] | None = None


class RolloutBackend(Protocol):
    """Generates turns for many episodes at once. ``tokenizer`` is a HF tokenizer (its chat
    template renders the conversation).

    ``generate`` continues every prompt by one turn: sampled ids end with the first stop id
    (kept) or at ``max_new_tokens``. ``sync_weights(training)`` is called after every update
    so the next rollout samples from the new policy (a no-op when both share one model).
    ``close()`` is called once when the run ends, however it ends (once per object when the
    rollout and training backends are the same object).
    """

    tokenizer: Any

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def sync_weights(self, source: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class TrainBatch:
    """Padded token batch for one training step, built from episodes by the trainer.

    One row per episode, right-padded, in group order (the ``rollout.n`` episodes of a task
    next to each other). All tensors are ``[batch, seq]`` torch tensors aligned with
    ``input_ids``: ``loss_mask[b, t]`` is 1 where token ``t`` was sampled by the policy,
    ``advantages[b, t]`` its advantage, ``old_logprobs``/``ref_logprobs[b, t]`` the log-prob of
    token ``t`` given the tokens before it (0 at ``t = 0``), as ``compute_logprobs`` returns
    them. ``group_ids`` (``[batch]``, optional) lets mini-batches hold whole GRPO groups when
    failed episodes left some groups short.
    """

    input_ids: Any
    attention_mask: Any
    loss_mask: Any
    advantages: Any
    old_logprobs: Any | None = None
    ref_logprobs: Any | None = None
    group_ids: Any | None = None


class TrainingBackend(Protocol):
    """Holds the trainable policy. Per training step the trainer calls::

        batch.old_logprobs = training.compute_logprobs(batch)
        batch.ref_logprobs = training.compute_logprobs(batch, reference=True)  # use_kl_loss only
        metrics = training.update(batch)        # actor/* metrics
        rollout.sync_weights(training)

    and for checkpoints ``save_hf(dir)`` (model + tokenizer, loadable by
    ``AutoModelForCausalLM.from_pretrained``) and ``save_state(dir)`` (optimizer and scheduler
    into files of its own inside ``dir``); ``load_hf(dir)`` and ``load_state(dir)`` put them back
    (roll-back, resume). ``apply_config(config)`` is called after a roll-back changed the run's
    config (e.g. the guard halved ``actor.lr``): the backend takes the new values it uses.
    ``close()`` is called once when the run ends, however it ends. RNG states and the data
    cursor are the trainer's to save.
    """

    tokenizer: Any

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> Any: ...

    def update(self, batch: TrainBatch) -> dict[str, float]: ...

    def save_hf(self, path: Any) -> None: ...

    def load_hf(self, path: Any) -> None: ...

    def save_state(self, path: Any) -> None: ...

    def load_state(self, path: Any) -> None: ...

    def apply_config(self, config: Any) -> None: ...

    def close(self) -> None: ...

