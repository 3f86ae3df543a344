"""FSDP2 training: the single-process policy's update, sharded over ranks with ``fully_shard``.

Each rank holds an :class:`FSDPPolicy`, a :class:`~userrl_plugins.backends.torch_policy.TorchPolicy`
whose model is wrapped with ``fully_shard`` per decoder layer and then at the root. Everything
that decides *what* the update is (mini-batches of whole GRPO groups, the PPO loss, its
normalisation by the mini-batch token count, clipping, the schedule) is TorchPolicy's; this
module adds what sharding needs:

- data parallelism that gives the same gradient as one process: every rank sees the whole
  step's batch, takes rows ``rank::world`` of each mini-batch, and divides its loss by the
  token count of the *whole* mini-batch; FSDP's gradient reduction is set to a plain sum
  (divide factor 1), so the reduced gradient is the single-process gradient;
- equal collective counts: every rank runs the same number of micro-batches (a rank with
  fewer rows runs a zero-weight micro-batch), because each forward all-gathers and each
  backward reduce-scatters;
- all-reduced loss statistics and a global gradient norm that works on CPU-offloaded shards
  (:func:`clip_sharded_grad_norm_`); on GPUs a process group with gloo beside NCCL;
- bf16 compute with fp32 gradient reduction on GPU (fp32 everywhere on CPU), parameter
  offload (``CPUOffloadPolicy``), optimizer-state offload between updates, activation offload
  (``torch.autograd.graph.save_on_cpu``) and gradient checkpointing;
- checkpoints: a full state dict gathered to rank 0 for the HF folder (the tied
  ``lm_head.weight`` dropped), and a sharded ``torch.distributed.checkpoint`` folder for resume.

The trainer talks to :class:`FSDPTrainingBackend`, which owns the rank processes: local
processes (``userrl_plugins.backends.rank_processes``, what the CPU tests use with gloo) or Ray
actors in a placement group on the recipe's GPUs (``userrl_plugins.backends.ray_placement``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from userrl_plugins.backends.torch_policy import TorchPolicy, load_causal_lm, load_tokenizer
from userrl_core.types import TrainBatch

log = logging.getLogger(__name__)

DCP_FOLDER = "fsdp_shards"
SCHEDULER_FILE = "scheduler.pt"


# ---------------------------------------------------------------------------- rank side


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, found by HF's ``_no_split_modules`` class names."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (no _no_split_modules classes)")
    return layers


def shard_model(model: torch.nn.Module, *, mesh: Any, on_gpu: bool, param_offload: bool) -> None:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if on_gpu else MixedPrecisionPolicy()
    )
    offload = CPUOffloadPolicy(pin_memory=on_gpu) if param_offload else OffloadPolicy()
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, offload_policy=offload)
    for module in [*layers, model]:  # each FSDP module reduces its own parameter group
        module.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is already its share
        module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)


def _full(value: Any) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter: a collective for DTensors."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def process_group_backend(on_gpu: bool) -> str:
    """The ``init_process_group`` backend string for one rank.

    On GPUs the group gets two backends, gloo for CPU tensors and NCCL for CUDA tensors (as verl
    does in ``verl/workers/fsdp_workers.py``): with ``param_offload`` the sharded parameters and
    gradients are CPU DTensors (``CPUOffloadPolicy``), and their collectives (the full state
    dict's gather, ``all_gather_object`` of CPU objects) cannot run on NCCL, which only takes
    CUDA tensors. On the CPU, gloo alone.
    """
    return "cpu:gloo,cuda:nccl" if on_gpu else "gloo"


def join_process_group(device_setting: str) -> tuple[torch.device, Any]:
    """Join the default process group (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
    and, on GPU, ``LOCAL_RANK`` from the environment) and return this rank's device and the
    1-D device mesh over all ranks. ``device_setting`` is ``trainer.device``."""
    from torch.distributed.device_mesh import init_device_mesh

    on_gpu = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if on_gpu:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(on_gpu), rank=rank, world_size=world)
    return device, init_device_mesh(device.type, (world,))


def clip_sharded_grad_norm_(parameters: list[torch.nn.Parameter], max_norm: float,
                            reduce_device: torch.device) -> float:
    """Clip the gradients of FSDP2-sharded parameters to a global L2 norm; return that norm.

    ``torch.nn.utils.clip_grad_norm_`` computes the norm of DTensor gradients as a DTensor
    whose reduction runs on the gradients' own device; with ``CPUOffloadPolicy`` those are CPU
    tensors on a mesh whose collectives are NCCL (verl works around it with its own
    ``fsdp2_clip_grad_norm_`` in ``verl/utils/fsdp_utils.py``). Here each rank sums the squares
    of its local shards on whatever device they live, the sums are all-reduced as one float64
    scalar on ``reduce_device`` (the rank's CUDA device, or the CPU under gloo), and every local
    shard is scaled in place. Gradients that are not sharded (replicated on every rank) are
    counted once. A non-finite norm is returned without touching the gradients.
    """
    from torch.distributed.tensor import DTensor, Replicate

    squares = torch.zeros((), dtype=torch.float64, device=reduce_device)
    locals_by_device: dict[torch.device, list[torch.Tensor]] = {}
    world = dist.get_world_size() if dist.is_initialized() else 1
    for param in parameters:
        grad = param.grad
        if grad is None:
            continue
        if isinstance(grad, DTensor):
            local = grad.to_local()
            replicas = 1
            for size, placement in zip(grad.device_mesh.shape, grad.placements):
                if isinstance(placement, Replicate):
                    replicas *= size
        else:
            local, replicas = grad, world
        if local.numel():
            norm = torch.linalg.vector_norm(local, dtype=torch.float32).to(reduce_device, torch.float64)
            squares += norm * norm / replicas
        locals_by_device.setdefault(local.device, []).append(local)
    if world > 1:
        dist.all_reduce(squares)
    total = float(squares.sqrt())
    if not math.isfinite(total):
        return total
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1.0:
        for tensors in locals_by_device.values():
            torch._foreach_mul_(tensors, coefficient)
    return total


class FSDPPolicy(TorchPolicy):
    """One rank's share of the policy; see the module docstring."""

    def __init__(self, *, model: torch.nn.Module, tokenizer: Any, actor: Any, rollout_n: int,
                 total_steps: int | None, mesh: Any, device: torch.device, dtype: str = "float32",
                 temperature: float = 1.0) -> None:
        on_gpu = device.type == "cuda"
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.save_dtype = dtype
        super().__init__(model=model, tokenizer=tokenizer, actor=actor, rollout_n=rollout_n, total_steps=total_steps,
                         temperature=temperature)
        shard_model(model, mesh=mesh, on_gpu=on_gpu, param_offload=actor.param_offload)
        if self.reference is not None:
            shard_model(self.reference, mesh=mesh, on_gpu=on_gpu, param_offload=actor.param_offload)
        # fully_shard replaced the parameters with sharded ones: point the (still empty)
        # optimizer at them; the scheduler keeps its optimizer object.
        self.optimizer.param_groups[0]["params"] = [p for p in model.parameters() if p.requires_grad]
        self.device = device
        self.offload_optimizer = actor.optimizer_offload and not actor.param_offload and on_gpu

    # ------------------------------------------------------------------ log-probs

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> torch.Tensor:
        """Each rank computes rows ``rank::world`` (equal forward counts); all ranks return the
        whole ``[B, T]`` tensor."""
        from userrl_plugins.backends.torch_policy import select_rows

        n_rows = int(batch.input_ids.shape[0])
        mine = list(range(self.rank, n_rows, self.world))
        per_rank = math.ceil(n_rows / self.world)
        padded = mine + [mine[-1] if mine else 0] * (per_rank - len(mine))  # repeat: same forward count
        local = super().compute_logprobs(select_rows(batch, padded), reference=reference)[: len(mine)]
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (mine, local))
        out = torch.zeros(batch.input_ids.shape, dtype=local.dtype)
        for rows, values in parts:
            if rows:
                out[rows] = values
        return out

    # ------------------------------------------------------------------ update

    def accumulate_gradients(self, batch: TrainBatch) -> dict[str, float]:
        """This rank's rows of one mini-batch, normalised by the whole mini-batch; loss statistics
        summed over ranks (they are shares of the mini-batch value)."""
        self.optimizer.zero_grad(set_to_none=True)
        mask_all, tokens_per_row, total_tokens, denominator = self.loss_normaliser(batch)
        if total_tokens == 0:
            return {}
        n_rows = int(batch.input_ids.shape[0])
        mine = list(range(self.rank, n_rows, self.world))
        micro = self.micro_batch_size
        n_micro = math.ceil(math.ceil(n_rows / self.world) / micro)
        stats: dict[str, float] = {}
        for index in range(n_micro):
            rows = mine[index * micro:(index + 1) * micro]
            if not rows:  # zero-weight pass: keeps this rank in step with the others' collectives
                self._micro_batch_backward(batch, [0], torch.zeros_like(mask_all[[0]]).to(self.device), denominator)
                continue
            n_tokens = float(tokens_per_row[rows].sum())
            values = self._micro_batch_backward(batch, rows, mask_all[rows].to(self.device), denominator)
            for key, value in values.items():
                share = n_tokens / total_tokens if key in _token_rate_metrics() else 1.0
                stats[key] = stats.get(key, 0.0) + value * share
        return self._sum_over_ranks(stats)

    def _micro_batch_backward(self, batch, rows, mask, denominator):
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=self.device.type == "cuda")
                   if self.actor.activation_offload else contextlib.nullcontext())
        with offload:
            return super()._micro_batch_backward(batch, rows, mask, denominator)

    def _sum_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, stats)
        keys = sorted({k for part in everyone for k in part})
        return {k: float(sum(part.get(k, 0.0) for part in everyone)) for k in keys}

    def _optimizer_step(self) -> float | None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = clip_sharded_grad_norm_(params, self.actor.grad_clip, self.device)
        if not math.isfinite(norm):
            log.warning("non-finite gradient norm (%s): optimizer step skipped", norm)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.offload_optimizer:
            self._move_optimizer_state(self.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.offload_optimizer:
            self._move_optimizer_state(torch.device("cpu"))
        return norm

    def _move_optimizer_state(self, device: torch.device) -> None:
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device, non_blocking=True)

    # ------------------------------------------------------------------ checkpoints

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded weights on rank 0's CPU (empty on other ranks), tied ``lm_head.weight``
        dropped, cast to ``model.dtype``. Collective: every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if getattr(self.model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.save_dtype, torch.float32)
        return {k: v.to(dtype) for k, v in state.items()} if self.rank == 0 else {}

    def full_weights(self):
        """``(name, tensor)`` for every weight, unsharded on this rank's device one at a time,
        cast to ``model.dtype``, tied ``lm_head.weight`` left out: what a colocated rollout engine
        on this rank loads. Collective: every rank must draw the whole sequence."""
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.save_dtype, torch.float32)
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        for name, value in self.model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            yield name, _full(value).to(self.device, dtype)

    def save_hf(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        state = self.full_state_dict()
        if self.rank == 0:
            path = Path(path)
            path.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"),
                      metadata={"format": "pt"})
            config = self.model.config
            config.architectures = [type(self.model).__name__.removeprefix("FSDP")]
            config.save_pretrained(str(path))
            if getattr(self.model, "generation_config", None) is not None:
                self.model.generation_config.save_pretrained(str(path))
            self.tokenizer.save_pretrained(str(path))
        dist.barrier()

    def load_hf(self, path: str | Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        fresh = load_causal_lm(path, dtype="float32", device=torch.device("cpu")).state_dict()
        set_model_state_dict(self.model, fresh, options=StateDictOptions(full_state_dict=True, strict=False))
        del fresh

    def save_state(self, path: str | Path) -> None:
        """Sharded model + optimizer through DCP (each rank writes its shards); the scheduler
        from rank 0."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        path = Path(path)
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path / DCP_FOLDER))
        if self.rank == 0:
            torch.save(self.scheduler.state_dict(), path / SCHEDULER_FILE)
        dist.barrier()

    def load_state(self, path: str | Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        path = Path(path)
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(path / DCP_FOLDER))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        self.scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=False))


def _token_rate_metrics() -> set[str]:
    from userrl_plugins.backends import torch_policy

    return torch_policy._TOKEN_RATE_METRICS


class FSDPWorker:
    """What runs in each rank process: joins the process group, loads and shards the model,
    and answers the driver's calls. Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT`` (and ``LOCAL_RANK`` on GPU) from its environment."""

    def __init__(self, config: Any, model_dir: str, total_steps: int | None = None) -> None:
        device, mesh = join_process_group(config.trainer.device)
        on_gpu = device.type == "cuda"
        torch.manual_seed(config.trainer.seed)
        model = load_causal_lm(model_dir, dtype="float32", device=torch.device("cpu"),
                               trust_remote_code=config.model.trust_remote_code)
        tokenizer = load_tokenizer(model_dir, chat_template=config.model.chat_template,
                                   trust_remote_code=config.model.trust_remote_code)
        self.policy = FSDPPolicy(
            model=model, tokenizer=tokenizer, actor=config.actor, rollout_n=config.rollout.n,
            total_steps=total_steps or config.trainer.total_training_steps, mesh=mesh, device=device,
            dtype=config.model.dtype if on_gpu else "float32", temperature=config.rollout.temperature,
        )

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.policy, method)(*args, **kwargs)

    def start_engine(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start this rank's rollout engine on this rank's device (``userrl_plugins.backends.sglang_backend``)."""
        from userrl_plugins.backends.sglang_backend import RankEngine

        self.rank_engine = RankEngine(self.policy, spec, rank=dist.get_rank(), local_gpu=self.policy.device.index or 0)
        return self.rank_engine.describe()

    def engine(self, method: str, *args: Any) -> Any:
        """A call every rank makes on its engine at once (release, weight sync, shutdown)."""
        return getattr(self.rank_engine, method)(*args)

    def submit_engine(self, method: str, *args: Any) -> Any:
        """One request to this rank's engine; returns a ``concurrent.futures.Future``."""
        return getattr(self.rank_engine, f"submit_{method}")(*args)

    def memory(self) -> dict[str, float]:
        """Peak memory of this rank in GiB (CUDA allocator on GPU, resident set on CPU)."""
        if self.policy.device.type == "cuda":
            return {"perf/max_memory_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                    "perf/max_memory_reserved_gb": torch.cuda.max_memory_reserved() / 2**30}
        import resource

        return {"perf/cpu_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def close(self) -> None:
        engine, self.rank_engine = getattr(self, "rank_engine", None), None
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.shutdown()
        if dist.is_initialized():
            dist.destroy_process_group()


class FSDPTrainingBackend:
    """The trainer's handle on the FSDP ranks (``actor.backend: fsdp``). Each method is a
    collective call on every rank; results come from rank 0 (they are identical on all ranks
    or all-reduced)."""

    def __init__(self, group: Any, tokenizer: Any, on_close: Callable[[], None] | None = None) -> None:
        self.group = group
        self.tokenizer = tokenizer
        self.model = None  # the weights live in the ranks: a colocated rollout gets them by sync
        self.before_training: list[Callable[[], None]] = []  # e.g. a colocated engine's release_memory
        self._on_close = on_close
        self._engines_started = False

    def _enter_training(self) -> None:
        for callback in self.before_training:
            callback()

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> torch.Tensor:
        self._enter_training()
        return self.group.call_all("call", "compute_logprobs", batch, reference=reference)[0]

    def update(self, batch: TrainBatch) -> dict[str, float]:
        self._enter_training()
        metrics = self.group.call_all("call", "update", batch)[0]
        memories = self.group.call_all("memory")
        for key in memories[0]:
            metrics[key] = max(m[key] for m in memories)
        return metrics

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.group.call_all("call", "full_state_dict")[0]

    def save_hf(self, path: str | Path) -> None:
        self.group.call_all("call", "save_hf", str(path))

    def load_hf(self, path: str | Path) -> None:
        self.group.call_all("call", "load_hf", str(path))

    def save_state(self, path: str | Path) -> None:
        self.group.call_all("call", "save_state", str(path))

    def load_state(self, path: str | Path) -> None:
        self.group.call_all("call", "load_state", str(path))

    def apply_config(self, config: Any) -> None:
        self.group.call_all("call", "apply_config", config)

    # ------------------------------------------------------------------ colocated rollout engines

    def start_engines(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """One rollout engine inside every rank's process; returns where each one runs."""
        self._engines_started = True
        return self.group.call_all("start_engine", spec)

    def engines(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every rank's engine at once, every rank's result."""
        return self.group.call_all("engine", method, *args)

    async def submit_engine(self, rank: int, method: str, *args: Any) -> Any:
        return await self.group.submit_engine(rank, method, *args)

    def shutdown_engines(self) -> None:
        """Shut every rank's engine down (idempotent)."""
        if self._engines_started:
            self._engines_started = False
            self.group.call_all("engine", "shutdown")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # before the ranks go: a Ray actor is killed without its close()
            self.shutdown_engines()
        self.group.shutdown()
        if self._on_close is not None:
            self._on_close()

    def __del__(self) -> None:  # last resort; the run closes it explicitly
        with contextlib.suppress(Exception):
            self.group.shutdown()


__all__ = ["FSDPPolicy", "FSDPWorker", "FSDPTrainingBackend", "clip_sharded_grad_norm_", "decoder_layers",
           "join_process_group", "process_group_backend", "shard_model"]
