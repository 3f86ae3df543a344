"""Per-GPU memory estimate for a recipe, with and without the FSDP offloads.

The dry run prints it next to the placement plan so that a user sees, before renting GPUs,
whether a recipe fits. It is arithmetic on the model's shape, not a measurement: pure Python,
no torch import, fast.

What is counted, per training GPU (``N`` = training GPUs, ``P`` = parameters):

- parameters: FSDP2 keeps the sharded parameters in fp32 (they are the optimizer's master
  weights), ``4·P/N`` bytes, plus the unsharded compute copy of the layers in flight
  (the current one and the prefetched next one) in the compute dtype;
- gradients: sharded fp32 gradients (``reduce_dtype`` fp32), ``4·P/N``, plus one unsharded
  layer's gradient in the compute dtype;
- optimizer state: AdamW's ``exp_avg`` and ``exp_avg_sq`` in fp32, ``8·P/N``;
- activations: what autograd saves per token in one Qwen3 decoder layer (HF eager code, bf16
  compute ``c`` = 2): each RMSNorm saves its fp32 input and its ``c``-byte output (``(4+c)·h``,
  two per layer), q_norm/k_norm the same on the query and key heads (``(4+c)·(Hq+Hkv)·d``),
  SDPA its query, key, value and output (``c·(2·Hq+2·Hkv)·d``, no ``s²`` score matrix with
  flash / memory-efficient attention), the SwiGLU MLP its gate, SiLU, up and product outputs
  (``4·c·I``); with gradient checkpointing only each layer's input (``c·h``) is saved and one
  layer is recomputed in full; with ``activation_offload`` the layer inputs go to the CPU;
- logits: 12 bytes per position and vocabulary entry of a micro-batch: ``torch_policy`` keeps
  the fp32 copy of the logits for the chunked log-prob recomputation (4), and in backward the
  slice ``logits[:, :-1]`` scatters each chunk's gradient into a full-size fp32 tensor (4) while
  autograd's accumulation buffer of that gradient (4) is alive; ``s`` is the longest episode
  (``rollout.max_episode_tokens``), so this is the worst case of a micro-batch;
- the root FSDP module (tied embedding / head, final norm) is unsharded in ``c`` bytes for the
  whole forward and backward, with its ``c``-byte gradient (``2·c·V·h``);
- optimizer step: ``foreach`` AdamW allocates one fp32 temporary the size of the parameters it
  steps (``4·P/N``) on top of parameters, gradients and moments; the training peak is the
  larger of the backward peak (activations alive) and the step peak (activations freed);
- the single-process ``transformers`` backend (``TorchPolicy``): unsharded fp32 master weights,
  gradients and moments (``16·P``) plus the autocast cache of ``c``-byte weight copies
  (``c·P``) held during forward and backward (:func:`estimate_single_process`);
- outside PyTorch's allocator (estimated, not in ``max_memory_allocated``): the CUDA context of
  each process on the GPU (the training rank, and a colocated SGLang engine's scheduler
  process), about 0.5 GiB each, and NCCL's communicator buffers when there are several
  training GPUs, about 0.25 GiB;
- rollout phase (a colocated SGLang engine, the hybrid engine): the engine's static memory
  (weights and KV pool) is ``mem_fraction`` of the GPU (SGLang sizes it from the free memory
  it measures when it starts, ``sglang/srt/mem_cache/kv_cache_configurator.py``; on a GPU the
  training rank has not filled yet that is the whole GPU). It comes on top of what training
  keeps resident between updates: sharded parameters and optimizer state that are not
  offloaded (gradients are freed by ``zero_grad(set_to_none=True)``), and, unless the
  training process empties its allocator cache before the engine resumes (our ``sglang``
  backend does, ``torch.cuda.empty_cache()``), every block its training phase reserved. The
  engine's CUDA graphs and decode activations live in the remaining ``1 - mem_fraction`` and
  are not counted. The peak is the larger of the two phases.

Offloads: ``param_offload`` moves sharded parameters and gradients to the CPU
(``CPUOffloadPolicy``); ``optimizer_offload`` moves the AdamW state to the CPU;
``activation_offload`` moves the checkpointed layer-boundary activations to the CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1024**3  # GiB, as torch.cuda.memory_allocated()/2**30 reports it


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    name: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    source: str = ""

    @property
    def layer_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attention = h * self.num_attention_heads * d * 2 + h * self.num_key_value_heads * d * 2
        mlp = 3 * h * self.intermediate_size  # gate, up, down (SwiGLU)
        norms = 2 * h + 2 * d  # input/post-attention RMSNorm, Qwen3's q_norm/k_norm
        return attention + mlp + norms

    @property
    def num_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        return self.num_layers * self.layer_params + embeddings + head + self.hidden_size


# Shapes of the recipes' models, from the config.json files of the Hugging Face repositories
# Qwen/Qwen3-0.6B and Qwen/Qwen3-4B (used when the model folder is not on this machine).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen3-0.6B": ModelShape(
        "Qwen/Qwen3-0.6B", hidden_size=1024, num_layers=28, intermediate_size=3072,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=True, source="built-in table (config.json of Qwen/Qwen3-0.6B)",
    ),
    "Qwen/Qwen3-4B": ModelShape(
        "Qwen/Qwen3-4B", hidden_size=2560, num_layers=36, intermediate_size=9728,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=True, source="built-in table (config.json of Qwen/Qwen3-4B)",
    ),
}


def shape_from_config(config: dict[str, Any], name: str, source: str) -> ModelShape:
    """Read a :class:`ModelShape` from a Hugging Face ``config.json`` mapping."""
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return ModelShape(
        name=name,
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        intermediate_size=int(config["intermediate_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        vocab_size=int(config["vocab_size"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        source=source,
    )


def find_model_shape(model_path: str) -> ModelShape | None:
    """The shape of ``model_path``: its config.json when the folder exists, else the built-in
    table (matched on the hub id or the folder name), else ``None``."""
    folder = Path(model_path).expanduser()
    config_file = folder / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return shape_from_config(config, name=model_path, source=str(config_file))
    if model_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_path]
    for hub_id, shape in KNOWN_SHAPES.items():
        if folder.name.lower() == hub_id.split("/")[-1].lower():
            return shape
    return None


LOGIT_BYTES = 12.0  # per position and vocabulary entry of a micro-batch (module docstring)


def layer_activation_bytes_per_token(shape: ModelShape, c: int) -> float:
    """Bytes autograd saves per token in one Qwen3 decoder layer without checkpointing (module
    docstring): two RMSNorms, q_norm/k_norm, SDPA's inputs and output, the SwiGLU MLP."""
    h, d, i = shape.hidden_size, shape.head_dim, shape.intermediate_size
    q, kv = shape.num_attention_heads * d, shape.num_key_value_heads * d
    norms = 2 * (4 + c) * h + (4 + c) * (q + kv)
    attention = c * (2 * q + 2 * kv)
    mlp = 4 * c * i
    return float(norms + attention + mlp)


CUDA_CONTEXT_BYTES = 0.5 * GB  # per process on a GPU (estimated: varies with the driver and loaded kernels)
NCCL_BUFFER_BYTES = 0.25 * GB  # one communicator between the training GPUs (estimated)


@dataclass
class MemoryEstimate:
    """Bytes per training GPU by component, for one offload setting."""

    label: str
    components: dict[str, float]  # name -> bytes in PyTorch's allocator during training
    cpu_components: dict[str, float] = field(default_factory=dict)  # name -> bytes per rank on the host
    rollout_bytes: float = 0.0  # the colocated engine's static memory (weights + KV pool)
    outside_allocator: dict[str, float] = field(default_factory=dict)  # CUDA contexts, NCCL buffers
    training_cache_emptied: bool = True  # the training process frees its cached blocks before rollout
    step_peak: float = 0.0  # the optimizer step: parameters, gradients, moments and foreach temporary

    @property
    def training_peak(self) -> float:
        """What ``torch.cuda.max_memory_allocated`` of a training rank should reach: the larger
        of the backward peak (every component) and the optimizer step's peak."""
        return max(sum(self.components.values()), self.step_peak)

    @property
    def overhead(self) -> float:
        return sum(self.outside_allocator.values())

    @property
    def resident_between_updates(self) -> float:
        """Training memory still held while the engine generates: the sharded parameters and
        optimizer state that stay on the GPU, or the whole training peak when the allocator's
        cache is not emptied (its blocks stay reserved)."""
        if not self.training_cache_emptied:
            return self.training_peak
        return self.components.get("parameters", 0.0) + self.components.get("optimizer state", 0.0)

    @property
    def rollout_phase(self) -> float:
        return self.resident_between_updates + self.rollout_bytes + self.overhead

    @property
    def peak(self) -> float:
        """The larger of the training phase and the rollout phase, both with the memory outside
        PyTorch's allocator."""
        return max(self.training_peak + self.overhead, self.rollout_phase)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "gpu_gib": {k: round(v / GB, 2) for k, v in self.components.items()},
            "cpu_gib_per_rank": {k: round(v / GB, 2) for k, v in self.cpu_components.items()},
            "outside_allocator_gib": {k: round(v / GB, 2) for k, v in self.outside_allocator.items()},
            "rollout_engine_gib": round(self.rollout_bytes / GB, 2),
            "training_peak_gib": round(self.training_peak / GB, 2),
            "rollout_phase_gib": round(self.rollout_phase / GB, 2),
            "peak_gib": round(self.peak / GB, 2),
        }


@dataclass(frozen=True)
class Geometry:
    """What the estimate depends on besides the model shape."""

    num_gpus: int
    micro_batch: int
    seq_len: int
    compute_bytes: int = 2  # bf16 on GPU
    gradient_checkpointing: bool = True
    rollout_mem_fraction: float = 0.0  # 0 when the rollout engine is not colocated on the GPU
    gpu_memory_gb: float = 80.0
    on_gpu: bool = True  # CUDA contexts and NCCL buffers exist only on GPUs
    training_cache_emptied: bool = True  # the sglang backend calls torch.cuda.empty_cache() before resuming


def estimate(
    shape: ModelShape,
    geometry: Geometry,
    *,
    param_offload: bool,
    optimizer_offload: bool,
    activation_offload: bool,
    label: str = "",
) -> MemoryEstimate:
    """Bytes per training GPU for one offload setting (see the module docstring)."""
    n = max(geometry.num_gpus, 1)
    p = shape.num_params
    c = geometry.compute_bytes
    b, s, h = geometry.micro_batch, geometry.seq_len, shape.hidden_size
    layers_in_flight = 2  # the current layer and the prefetched next one

    sharded_params = 4.0 * p / n
    sharded_grads = 4.0 * p / n
    optimizer = 8.0 * p / n
    gpu: dict[str, float] = {}
    cpu: dict[str, float] = {}
    (cpu if param_offload else gpu)["parameters"] = sharded_params
    (cpu if param_offload else gpu)["gradients"] = sharded_grads
    (cpu if optimizer_offload else gpu)["optimizer state"] = optimizer
    gpu["unsharded layers in flight"] = layers_in_flight * shape.layer_params * c * 2.0  # weights + grads

    per_layer = layer_activation_bytes_per_token(shape, c) * b * s
    if geometry.gradient_checkpointing:
        boundaries = shape.num_layers * b * s * h * c
        (cpu if activation_offload else gpu)["activations (layer boundaries)"] = boundaries
        gpu["activations (one layer recomputed)"] = per_layer
    else:
        gpu["activations (all layers)"] = per_layer * shape.num_layers
    gpu["root module (embedding/head) and its gradient"] = 2.0 * c * shape.vocab_size * h
    gpu["logits (fp32) and two fp32 gradient buffers"] = LOGIT_BYTES * b * s * shape.vocab_size
    step_peak = (0.0 if optimizer_offload else optimizer) + (0.0 if param_offload else sharded_params
                                                              + sharded_grads + 4.0 * p / n)

    rollout = geometry.rollout_mem_fraction * geometry.gpu_memory_gb * GB
    outside: dict[str, float] = {}
    if geometry.on_gpu:
        outside["CUDA context (training rank)"] = CUDA_CONTEXT_BYTES
        if geometry.rollout_mem_fraction:
            outside["CUDA context (SGLang engine process)"] = CUDA_CONTEXT_BYTES
        if n > 1:
            outside["NCCL buffers"] = NCCL_BUFFER_BYTES
    return MemoryEstimate(label=label, components=gpu, cpu_components=cpu, rollout_bytes=rollout,
                          outside_allocator=outside, training_cache_emptied=geometry.training_cache_emptied,
                          step_peak=step_peak)


def estimate_single_process(shape: ModelShape, geometry: Geometry, label: str = "transformers backend") -> MemoryEstimate:
    """Bytes on the GPU of the single-process ``transformers`` backend (``TorchPolicy``): fp32
    master weights, their fp32 gradients and AdamW moments, the autocast cache of ``c``-byte
    weight copies during forward and backward, all activations (no sharding, no offload)."""
    p, c = shape.num_params, geometry.compute_bytes
    b, s = geometry.micro_batch, geometry.seq_len
    per_layer = layer_activation_bytes_per_token(shape, c) * b * s
    gpu = {
        "parameters (fp32 master)": 4.0 * p,
        "gradients (fp32)": 4.0 * p,
        "autocast weight copies": c * p if c < 4 else 0.0,
        ("activations (one layer recomputed)" if geometry.gradient_checkpointing else "activations (all layers)"):
            per_layer if geometry.gradient_checkpointing else per_layer * shape.num_layers,
        "logits (fp32) and two fp32 gradient buffers": LOGIT_BYTES * b * s * shape.vocab_size,
    }
    if geometry.gradient_checkpointing:
        gpu["activations (layer boundaries)"] = shape.num_layers * b * s * shape.hidden_size * c
    # AdamW's moments are created by the first step, after backward has freed the activations
    step_peak = 4.0 * p + 4.0 * p + 8.0 * p + 4.0 * p
    return MemoryEstimate(label=label, components=gpu, step_peak=step_peak)


def fp32_build_bytes(shape: ModelShape) -> float:
    """GPU bytes of a model created in fp32 on the GPU before ``fully_shard`` moves it (as
    ``benchmarks/gpu_smoke.py`` builds it): all fp32 weights plus the fp32 copy of the largest
    parameter, the (tied) embedding, that sharding makes while the original is alive."""
    return 4.0 * shape.num_params + 4.0 * shape.vocab_size * shape.hidden_size


def estimate_both(shape: ModelShape, geometry: Geometry, actor: Any) -> list[MemoryEstimate]:
    """The recipe's offload setting and the setting with every offload off."""
    recipe = estimate(
        shape, geometry,
        param_offload=bool(actor.param_offload),
        optimizer_offload=bool(actor.optimizer_offload),
        activation_offload=bool(actor.activation_offload),
        label="as configured",
    )
    none = estimate(shape, geometry, param_offload=False, optimizer_offload=False,
                    activation_offload=False, label="no offload")
    full = estimate(shape, geometry, param_offload=True, optimizer_offload=True,
                    activation_offload=geometry.gradient_checkpointing, label="all offloads")
    return [recipe, none, full]


def geometry_from_config(config: Any, registry: Any = None) -> Geometry:
    """Batch geometry of a validated ``RunConfig``: training GPUs, micro-batch, longest episode,
    and the GPU share the recipe's factories keep while training (``Requirements``)."""
    trainer = config.trainer
    training_gpus = len(trainer.gpu_ids) if trainer.gpu_ids else trainer.n_gpus_per_node
    num_gpus = max(training_gpus, 1) * trainer.nnodes
    from userrl_core.preflight.requirements_check import declared_requirements

    rollout_share = max((needs.gpu_memory_fraction for _, _, needs in declared_requirements(config, registry)), default=0.0)
    on_gpu = training_gpus > 0
    return Geometry(
        num_gpus=num_gpus,
        micro_batch=config.actor.ppo_micro_batch_size_per_gpu,
        seq_len=config.rollout.max_episode_tokens,
        compute_bytes=2 if on_gpu else 4,
        gradient_checkpointing=config.actor.gradient_checkpointing,
        rollout_mem_fraction=rollout_share,
        gpu_memory_gb=float(getattr(trainer, "gpu_memory_gb", 80.0)),
        on_gpu=on_gpu,
    )


def estimate_for_config(config: Any) -> tuple[ModelShape | None, Geometry, list[MemoryEstimate]]:
    """Everything the dry run prints about memory; no estimates when the shape is unknown."""
    shape = find_model_shape(config.model.path)
    geometry = geometry_from_config(config)
    if shape is None:
        return None, geometry, []
    return shape, geometry, estimate_both(shape, geometry, config.actor)


def format_estimate(shape: ModelShape | None, geometry: Geometry, estimates: list[MemoryEstimate]) -> str:
    """A plain-text table for the dry run."""
    if shape is None:
        return ("memory estimate: model shape unknown (no config.json at model.path and not in the "
                "built-in table)")
    lines = [
        f"memory estimate per training GPU: {shape.name}, {shape.num_params / 1e9:.2f}B parameters "
        f"(shape from {shape.source})",
        f"  {geometry.num_gpus} training GPU(s), micro-batch {geometry.micro_batch} x {geometry.seq_len} "
        f"tokens, gradient checkpointing {'on' if geometry.gradient_checkpointing else 'off'}, "
        f"{geometry.gpu_memory_gb:g} GiB per GPU",
    ]
    names: list[str] = []
    for est in sorted(estimates, key=lambda e: len(e.cpu_components)):  # the no-offload order first
        for name in list(est.components) + list(est.cpu_components):
            if name not in names:
                names.append(name)
    header = f"  {'component':<42}" + "".join(f"{e.label:>16}" for e in estimates)
    lines.append(header)
    for name in names:
        cells = []
        for est in estimates:
            if name in est.components:
                cells.append(f"{est.components[name] / GB:>13.2f} GiB")
            elif name in est.cpu_components:
                cells.append(f"{'(CPU) ' + format(est.cpu_components[name] / GB, '.2f'):>13} GiB")
            else:
                cells.append(f"{'-':>17}")
        lines.append(f"  {name:<42}" + "".join(cells))
    lines.append(f"  {'training phase, PyTorch allocator':<42}"
                 + "".join(f"{e.training_peak / GB:>13.2f} GiB" for e in estimates))
    lines.append(f"  {'outside the allocator (contexts, NCCL)':<42}"
                 + "".join(f"{e.overhead / GB:>13.2f} GiB" for e in estimates))
    lines.append(f"  {'training phase total':<42}"
                 + "".join(f"{(e.training_peak + e.overhead) / GB:>13.2f} GiB" for e in estimates))
    lines.append(f"  {'rollout engine (released while training)':<42}"
                 + "".join(f"{e.rollout_bytes / GB:>13.2f} GiB" for e in estimates))
    lines.append(f"  {'rollout phase (+ resident training state)':<42}"
                 + "".join(f"{e.rollout_phase / GB:>13.2f} GiB" for e in estimates))
    lines.append(f"  {'peak of the two phases':<42}" + "".join(f"{e.peak / GB:>13.2f} GiB" for e in estimates))
    over = [e.label for e in estimates if e.peak > geometry.gpu_memory_gb * GB]
    if over:
        lines.append(f"  does not fit in {geometry.gpu_memory_gb:g} GiB: {', '.join(over)}")
    return "\n".join(lines)


def phase_estimate_bytes(shape: ModelShape, *, sharded: bool, offload: bool, micro_batch: int, seq_len: int) -> float:
    """What ``max_memory_allocated`` of one ``benchmarks/gpu_smoke.py`` phase should reach on one
    GPU: sharded training (FSDP2; with ``offload``, every offload and gradient checkpointing, and
    the peak may be building the fp32 model on the GPU before sharding moves it to the CPU), or
    single-process training (fp32 master weights, bf16 autocast)."""
    geometry = Geometry(num_gpus=1, micro_batch=micro_batch, seq_len=seq_len, compute_bytes=2,
                        gradient_checkpointing=offload)
    if not sharded:
        return estimate_single_process(shape, geometry).training_peak
    trained = estimate(shape, geometry, param_offload=offload, optimizer_offload=offload,
                       activation_offload=offload).training_peak
    return max(trained, fp32_build_bytes(shape)) if offload else trained
