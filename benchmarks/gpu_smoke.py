"""GPU smoke benchmark: Qwen3-0.6B- and Qwen3-4B-shaped models through the real backends.

One script for a machine with one CUDA GPU and no internet (``make gpu-smoke``)::

    python3 benchmarks/gpu_smoke.py --out gpu_smoke.json            # CUDA, both shapes, ~4-6 min on an H200
    python3 benchmarks/gpu_smoke.py --device cpu --out smoke.json   # tiny shapes, the same code (tests)

Models are built from the config JSONs in ``benchmarks/model_shapes/`` with random weights,
directly on the target device (never a CPU init of 4B parameters). Phases, per shape:

- ``fsdp``: the ``fsdp`` backend's rank code (:func:`join_process_group`, :class:`FSDPPolicy`)
  as one rank on NCCL (gloo on the CPU) in bf16: log-probs, updates, the full state dict, the
  HF save and a DCP save + load (the load is checked to restore a shard that was zeroed);
- ``fsdp_offload``: the same with ``param_offload``, ``optimizer_offload``,
  ``activation_offload`` and gradient checkpointing on (the 4B recipe's switches);
- ``transformers``: the ``transformers`` backends: one update of :class:`TorchPolicy` (fp32
  master weights, bf16 autocast) and :class:`TransformersRollout` generating a batch.

Each update runs at lr 1e-6, and the phase reports the share of sampled weights that changed:
a bf16 update that drops below bf16 resolution shows up as 0. Figures: step time, tokens/s,
MFU against the datasheet peak and against a matmul ceiling measured here, and
``max_memory_allocated`` / ``max_memory_reserved`` against ``userrl_core.preflight.memory_estimate`` for
the same shape. The FLOP formula is written into the JSON.

Robustness: a global time budget (``--time-budget``) skips the phases that no longer fit
(reported as skipped); each phase's exception is recorded and the next phase runs; the JSON is
rewritten after every phase; a watchdog writes it and exits if a phase hangs past the budget.
Imports only torch, transformers, pydantic, pluggy and this repository (no rich, litellm, ray).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SHAPES_DIR = Path(__file__).resolve().parent / "model_shapes"
H200_DENSE_BF16_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet, dense (no sparsity) BF16 Tensor Core
FLOP_FORMULA = (
    "forward FLOPs = 2*N*B*S + 2*L*B*S^2*H*d  (N: parameters of the matmuls, i.e. every layer's q/k/v/o "
    "and gate/up/down projections plus the vocab x hidden head; L layers, H attention heads, head dim d; "
    "B sequences of S tokens; the attention term is QK^T and AV with a causal mask, half of 4*S^2*H*d); "
    "an update counts 3x the forward (forward + backward), also with gradient checkpointing (its "
    "recomputation is not counted, as in the usual MFU definition); log-probs count 1x. "
    "MFU = counted FLOPs / time / peak."
)
PHASES = ("fsdp", "fsdp_offload", "transformers")
# Packages a bare GPU machine may lack: none of them may be imported on this path.
NOT_NEEDED = {"rich", "litellm", "ray", "matplotlib", "hydra", "omegaconf", "wandb", "sglang"}


def use_repo_checkout() -> None:
    """Import ``userrl_core`` and ``userrl_plugins`` from this checkout when they are not
    installed (a bare GPU machine): the repo root goes on ``sys.path`` and ``plugins/`` is
    registered as the package ``userrl_plugins`` (pyproject's ``package-dir`` mapping)."""
    if importlib.util.find_spec("userrl_core") is None:
        sys.path.insert(0, str(REPO))
    if "userrl_plugins" in sys.modules or importlib.util.find_spec("userrl_plugins") is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "userrl_plugins", REPO / "plugins" / "__init__.py", submodule_search_locations=[str(REPO / "plugins")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["userrl_plugins"] = module
    spec.loader.exec_module(module)


use_repo_checkout()

import torch  # noqa: E402

from userrl_core.preflight.memory_estimate import (  # noqa: E402
    GB, Geometry, estimate, estimate_single_process, fp32_build_bytes, shape_from_config)


# ---------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shapes", default=None,
                        help="comma-separated names from benchmarks/model_shapes/ (default: qwen3-0.6b,qwen3-4b "
                             "on cuda, qwen3-tiny on cpu)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}")
    parser.add_argument("--out", required=True, help="JSON file to write (rewritten after every phase)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per update (default 8 cuda, 4 cpu)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024 cuda, 32 cpu)")
    parser.add_argument("--micro", type=int, default=None, help="micro-batch (default 4 cuda, 2 cpu)")
    parser.add_argument("--steps", type=int, default=None, help="timed updates after one warm-up (default 2 cuda, 1 cpu)")
    parser.add_argument("--gen-batch", type=int, default=None, help="prompts generated at once (default 16 cuda, 2 cpu)")
    parser.add_argument("--gen-prompt", type=int, default=None, help="prompt tokens (default 256 cuda, 8 cpu)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens (default 128 cuda, 4 cpu)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--time-budget", type=float, default=330.0,
                        help="seconds for the whole run; phases that would start after it are skipped")
    parser.add_argument("--min-phase-seconds", type=float, default=None,
                        help="a phase starts only with this much budget left (default 45 cuda, 0 cpu)")
    parser.add_argument("--disk-budget-gb", type=float, default=30.0,
                        help="largest checkpoint (HF or DCP) the run may write; larger ones are skipped")
    parser.add_argument("--workdir", default=None, help="scratch folder for checkpoints (default: next to --out)")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    defaults = {"shapes": "qwen3-0.6b,qwen3-4b" if gpu else "qwen3-tiny", "batch": 8 if gpu else 4,
                "seq": 1024 if gpu else 32, "micro": 4 if gpu else 2, "steps": 2 if gpu else 1,
                "gen_batch": 16 if gpu else 2, "gen_prompt": 256 if gpu else 8, "gen_tokens": 128 if gpu else 4,
                "min_phase_seconds": 45.0 if gpu else 0.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"--phases: unknown {sorted(unknown)}; choose from {PHASES}")
    return args


def load_shape_config(name: str) -> dict[str, Any]:
    path = SHAPES_DIR / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--shapes: no {path.relative_to(REPO)} (have: "
                         f"{', '.join(sorted(p.stem for p in SHAPES_DIR.glob('*.json')))})")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def matmul_ceiling(device: torch.device) -> dict[str, Any]:
    """Sustained TFLOP/s of one large square matmul in the compute dtype (bf16 on CUDA, fp32 on
    the CPU): the practical ceiling the MFU is also reported against."""
    n, dtype, repeats = (8192, torch.bfloat16, 40) if device.type == "cuda" else (512, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _, seconds = timed(device, lambda: [a @ b for _ in range(repeats)])
    tflops = 2 * n**3 * repeats / seconds / 1e12
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "repeats": repeats, "tflops": _sig(tflops)}


def _sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (CPU-mode figures are tiny, GPU ones large)."""
    return float(f"{value:.{digits}g}")


def matmul_params(shape: Any) -> int:
    """N of the FLOP formula: the layers' projection matrices and the output head."""
    h, d = shape.hidden_size, shape.head_dim
    attention = h * shape.num_attention_heads * d * 2 + h * shape.num_key_value_heads * d * 2
    return shape.num_layers * (attention + 3 * h * shape.intermediate_size) + shape.vocab_size * h


def forward_flops(shape: Any, batch: int, seq: int) -> float:
    attention = 2.0 * shape.num_layers * batch * seq**2 * shape.num_attention_heads * shape.head_dim
    return 2.0 * matmul_params(shape) * batch * seq + attention


def rates(flops: float, seconds: float, tokens: int, peaks: dict[str, float | None]) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
                           "tflops_per_s": _sig(flops / seconds / 1e12)}
    for name, peak in peaks.items():
        out[f"mfu_vs_{name}"] = _sig(flops / seconds / 1e12 / peak) if peak else None
    return out


def memory_figures(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        import resource

        return {"cpu_max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    free, total = torch.cuda.mem_get_info(device)
    # what the device holds beyond PyTorch's reserve: this process's CUDA context, NCCL and cuBLAS
    # buffers (and any other process on the GPU)
    outside = (total - free - torch.cuda.memory_reserved(device)) / GB
    return {"max_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GB, 2),
            "max_memory_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GB, 2),
            "device_used_outside_allocator_gib": round(outside, 2)}


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def folder_gib(path: Path) -> float:
    return _sig(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GB)


# ---------------------------------------------------------------------------- inputs


def make_tokenizer(config: dict[str, Any]) -> Any:
    """A real ``PreTrainedTokenizerFast`` that knows only Qwen3's special tokens (``<|endoftext|>``
    pads, ``<|im_end|>`` ends a turn): the smoke feeds token ids, so no vocabulary file is needed,
    but the backends save it and read its pad and eos ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|endoftext|>": int(config["bos_token_id"]), "<|im_end|>": int(config["eos_token_id"])}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")


def build_model(config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """Random fp32 weights created on ``device`` itself."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_config = AutoConfig.for_model(config["model_type"], **settings)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    return model


def make_batch(vocab: int, rows: int, seq: int, seed: int = 0) -> Any:
    """``rows`` full-length episodes (GRPO groups of 2): a 64-token prompt masked out, the rest
    sampled tokens with a ±1 advantage per episode."""
    from userrl_core.types import TrainBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, seq), generator=g)
    attention = torch.ones(rows, seq, dtype=torch.long)
    loss_mask = torch.ones(rows, seq, dtype=torch.long)
    loss_mask[:, : min(64, seq // 4)] = 0
    signs = torch.where(torch.arange(rows) % 2 == 0, 1.0, -1.0)
    return TrainBatch(input_ids=ids, attention_mask=attention, loss_mask=loss_mask,
                      advantages=(loss_mask * signs[:, None]).float(), group_ids=torch.arange(rows) // 2)


def run_config(args: argparse.Namespace, *, offload: bool, model_dtype: str) -> Any:
    from userrl_core.config.schema import RunConfig

    return RunConfig.model_validate({
        "model": {"path": "random-init", "dtype": model_dtype},
        "data": {"train_files": ["unused.parquet"], "train_batch_size": args.batch // 2},
        "rollout": {"n": 2},
        "actor": {"lr": args.lr, "weight_decay": 0.0, "ppo_mini_batch_size": args.batch // 2,
                  "ppo_micro_batch_size_per_gpu": args.micro, "gradient_checkpointing": offload,
                  "param_offload": offload, "optimizer_offload": offload, "activation_offload": offload},
        "trainer": {"device": args.device},
    })


class WeightProbe:
    """A few parameters' local values, to tell whether an update moved the weights."""

    def __init__(self, model: torch.nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        picks = [named[i] for i in sorted({1, len(named) // 2, len(named) - 2})]
        self.params = picks
        self.before = [self._local(p).detach().float().cpu().clone() for _, p in picks]

    @staticmethod
    def _local(p: torch.Tensor) -> torch.Tensor:
        return p.to_local() if hasattr(p, "to_local") else p

    def changed_fraction(self) -> float:
        changed = total = 0
        for (_, p), before in zip(self.params, self.before):
            now = self._local(p).detach().float().cpu()
            changed += int((now != before).sum())
            total += now.numel()
        return changed / max(total, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- phases


def fsdp_phase(ctx: dict[str, Any], *, offload: bool) -> dict[str, Any]:
    """One FSDP rank through log-probs, updates and every checkpoint path."""
    import torch.distributed as dist

    from userrl_plugins.backends.fsdp_backend import FSDPPolicy, join_process_group, process_group_backend

    args, device, shape, config = ctx["args"], ctx["device"], ctx["shape"], ctx["config"]
    out: dict[str, Any] = {}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())})
    recipe = run_config(args, offload=offload, model_dtype="bfloat16")
    reset_memory(device)
    rank_device, mesh = join_process_group(args.device)
    out["process_group"] = process_group_backend(rank_device.type == "cuda")
    policy = None
    try:
        model, out["init_s"] = timed(device, lambda: build_model(config, device))
        out["init_s"] = round(out["init_s"], 2)
        policy = FSDPPolicy(model=model, tokenizer=ctx["tokenizer"], actor=recipe.actor, rollout_n=2,
                            total_steps=None, mesh=mesh, device=rank_device, dtype="bfloat16")
        del model
        out["param_device"] = str(next(policy.model.parameters()).device)
        batch = make_batch(shape.vocab_size, args.batch, args.seq)
        tokens = args.batch * args.seq
        fwd = forward_flops(shape, args.batch, args.seq)
        logprobs, seconds = timed(device, lambda: policy.compute_logprobs(batch))
        batch.old_logprobs = logprobs
        out["logprobs_first_s"] = round(seconds, 3)
        _, seconds = timed(device, lambda: policy.compute_logprobs(batch))
        out["logprobs"] = rates(fwd, seconds, tokens, ctx["peaks"])
        probe = WeightProbe(policy.model)
        metrics, seconds = timed(device, lambda: policy.update(batch))
        out["update_first_s"] = round(seconds, 3)
        out["weights_changed_fraction_after_one_update"] = round(probe.changed_fraction(), 4)
        out["grad_norm"] = metrics.get("actor/grad_norm")
        step_times = []
        for _ in range(args.steps):
            if ctx["time_left"]() < 0:
                out["steps_cut_short"] = "time budget"
                break
            _, seconds = timed(device, lambda: policy.update(batch))
            step_times.append(seconds)
        if step_times:
            step = sorted(step_times)[len(step_times) // 2]
            out["update"] = rates(3 * fwd, step, tokens, ctx["peaks"]) | {"step_times_s": [round(t, 3) for t in step_times]}
        out["memory"] = memory_figures(device)
        out["estimate"] = estimate_for(ctx, offload=offload)
        if "max_memory_allocated_gib" in out["memory"]:
            out["memory"]["allocated_over_estimate"] = round(
                out["memory"]["max_memory_allocated_gib"]
                / max(out["estimate"]["training_peak_gib"], out["estimate"].get("fp32_build_gib", 0.0)), 3)

        state, seconds = timed(device, policy.full_state_dict)
        out["full_state_dict"] = {"seconds": round(seconds, 2), "tensors": len(state),
                                  "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in state.values()}),
                                  "has_tied_lm_head": "lm_head.weight" in state,
                                  "gib": round(sum(v.numel() * v.element_size() for v in state.values()) / GB, 2)}
        del state
        workdir = ctx["workdir"] / f"{ctx['shape_name']}-{'offload' if offload else 'plain'}"
        hf_gib = shape.num_params * 2 / GB
        if hf_gib > args.disk_budget_gb:
            out["hf_save"] = {"skipped": f"{hf_gib:.1f} GiB > --disk-budget-gb {args.disk_budget_gb:g}"}
        else:
            _, seconds = timed(device, lambda: policy.save_hf(workdir / "hf"))
            out["hf_save"] = {"seconds": round(seconds, 2), "gib": folder_gib(workdir / "hf")}
            shutil.rmtree(workdir / "hf", ignore_errors=True)
        out["dcp"] = dcp_round_trip(ctx, policy, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        out["memory_after_checkpoints"] = memory_figures(device)
    finally:
        del policy
        reset_memory(device)
        if dist.is_initialized():
            dist.destroy_process_group()
    return out


def dcp_round_trip(ctx: dict[str, Any], policy: Any, workdir: Path) -> dict[str, Any]:
    """Save the sharded model + optimizer, zero one shard, load, and check it came back."""
    args, device, shape = ctx["args"], ctx["device"], ctx["shape"]
    dcp_gib = shape.num_params * 12 / GB  # fp32 weights and AdamW's two moments
    if dcp_gib > args.disk_budget_gb:
        return {"skipped": f"fp32 weights + AdamW moments are {dcp_gib:.1f} GiB > --disk-budget-gb "
                           f"{args.disk_budget_gb:g}"}
    _, save_s = timed(device, lambda: policy.save_state(workdir / "dcp"))
    size = folder_gib(workdir / "dcp")
    name, param = next((n, p) for n, p in policy.model.named_parameters() if "layers.0." in n)
    local = param.to_local() if hasattr(param, "to_local") else param
    saved = local.detach().clone()
    with torch.no_grad():
        local.zero_()
    _, load_s = timed(device, lambda: policy.load_state(workdir / "dcp"))
    local = param.to_local() if hasattr(param, "to_local") else param
    restored = bool(torch.equal(local.detach(), saved))
    shutil.rmtree(workdir / "dcp", ignore_errors=True)
    return {"save_s": round(save_s, 2), "load_s": round(load_s, 2), "gib": size,
            "zeroed_param_restored": restored, "param": name}


def transformers_phase(ctx: dict[str, Any]) -> dict[str, Any]:
    """The single-process backends: a bf16 update with fp32 master weights, then generation."""
    from userrl_core.types import GenerationRequest
    from userrl_plugins.backends.torch_policy import TorchPolicy
    from userrl_plugins.backends.transformers_backend import TransformersRollout

    args, device, shape, config = ctx["args"], ctx["device"], ctx["shape"], ctx["config"]
    out: dict[str, Any] = {}
    recipe = run_config(args, offload=False, model_dtype="bfloat16")
    reset_memory(device)
    policy = None
    try:
        model, seconds = timed(device, lambda: build_model(config, device))
        out["init_s"] = round(seconds, 2)
        policy = TorchPolicy(model=model, tokenizer=ctx["tokenizer"], actor=recipe.actor, rollout_n=2,
                             total_steps=None, compute_dtype=torch.bfloat16)
        del model
        batch = make_batch(shape.vocab_size, args.batch, args.seq, seed=1)
        batch.old_logprobs = policy.compute_logprobs(batch)
        probe = WeightProbe(policy.model)
        _, seconds = timed(device, lambda: policy.update(batch))
        out["update_first_s"] = round(seconds, 3)
        out["weights_changed_fraction_after_one_update"] = round(probe.changed_fraction(), 4)
        out["memory_training"] = memory_figures(device)
        out["estimate"] = transformers_estimate(ctx)
        rollout = TransformersRollout(model=policy.model, tokenizer=ctx["tokenizer"], compute_dtype=policy.compute_dtype)
        g = torch.Generator().manual_seed(2)
        prompts = torch.randint(0, shape.vocab_size, (args.gen_batch, args.gen_prompt), generator=g).tolist()
        request = GenerationRequest(prompts=prompts, max_new_tokens=args.gen_tokens, seed=0)
        rollout.generate_blocking(GenerationRequest(prompts=prompts[:1], max_new_tokens=2, seed=0))  # warm-up
        result, seconds = timed(device, lambda: rollout.generate_blocking(request))
        new_tokens = sum(len(ids) for ids in result.token_ids)
        out["generate"] = {"seconds": round(seconds, 3), "prompts": args.gen_batch, "prompt_tokens": args.gen_prompt,
                           "max_new_tokens": args.gen_tokens, "new_tokens": new_tokens,
                           "new_tokens_per_s": round(new_tokens / seconds, 1),
                           "logprobs_finite": all(math.isfinite(x) for row in result.logprobs for x in row)}
        out["memory"] = memory_figures(device)
    finally:
        del policy
        reset_memory(device)
    return out


def estimate_for(ctx: dict[str, Any], *, offload: bool) -> dict[str, Any]:
    args, device = ctx["args"], ctx["device"]
    gpu_gib = torch.cuda.get_device_properties(device).total_memory / GB if device.type == "cuda" else 80.0
    geometry = Geometry(num_gpus=1, micro_batch=args.micro, seq_len=args.seq, compute_bytes=2,
                        gradient_checkpointing=offload, gpu_memory_gb=gpu_gib, on_gpu=device.type == "cuda")
    result = estimate(ctx["shape"], geometry, param_offload=offload, optimizer_offload=offload,
                      activation_offload=offload, label="offloads on" if offload else "no offload")
    out = result.as_dict()
    if offload:  # the fp32 model is built on the GPU before fully_shard moves it to the CPU
        out["fp32_build_gib"] = round(fp32_build_bytes(ctx["shape"]) / GB, 2)
    return out


def transformers_estimate(ctx: dict[str, Any]) -> dict[str, Any]:
    """The single-process backend's estimate: fp32 master weights, bf16 autocast, no checkpointing."""
    args = ctx["args"]
    geometry = Geometry(num_gpus=1, micro_batch=args.micro, seq_len=args.seq, compute_bytes=2,
                        gradient_checkpointing=False)
    return estimate_single_process(ctx["shape"], geometry).as_dict()


# ---------------------------------------------------------------------------- driver


class Report:
    """The JSON result, rewritten after every phase (a killed run still leaves its figures)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data = header | {"phases": []}
        self.lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.data["phases"].append(entry)
        self.write()

    def write(self, **extra: Any) -> None:
        with self.lock:
            self.data.update(extra)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            tmp.replace(self.path)


def start_watchdog(report: Report, deadline: float, grace: float = 45.0) -> None:
    """If a phase hangs past the budget, write what was measured and stop the process."""

    def watch() -> None:
        while time.monotonic() < deadline + grace:
            time.sleep(1.0)
        report.write(watchdog=f"stopped {grace:g} s after the time budget: the running phase did not finish")
        print(f"gpu_smoke: watchdog: over budget, partial results in {report.path}", flush=True)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="gpu-smoke-watchdog").start()


def machine(device: torch.device) -> dict[str, Any]:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / GB, 1),
                 "cuda": torch.version.cuda, "nccl": str(torch.cuda.nccl.version())}
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.time_budget
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: --device cuda but torch sees no CUDA device (use --device cpu)")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(args.out).resolve()
    workdir = Path(args.workdir).resolve() if args.workdir else out.parent / f"{out.stem}_scratch"
    report = Report(out, {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine(device),
        "flop_formula": FLOP_FORMULA,
        "peak_tflops_datasheet": H200_DENSE_BF16_TFLOPS if device.type == "cuda" else None,
        "peak_note": "H200 SXM dense BF16 datasheet figure; on another GPU compare against the measured matmul ceiling",
    })
    start_watchdog(report, deadline)
    ceiling = matmul_ceiling(device)
    report.write(matmul_ceiling=ceiling)
    peaks = {"datasheet": H200_DENSE_BF16_TFLOPS if device.type == "cuda" else None, "matmul": ceiling["tflops"]}
    plan = [(shape, phase) for shape in args.shapes.split(",") for phase in args.phases.split(",")]
    for shape_name, phase in plan:
        entry: dict[str, Any] = {"shape": shape_name, "phase": phase}
        left = deadline - time.monotonic()
        if left < args.min_phase_seconds:
            entry |= {"status": "skipped", "reason": f"time budget: {left:.0f} s left of {args.time_budget:g} s"}
            report.add(entry)
            print(f"gpu_smoke: {shape_name}/{phase}: skipped ({entry['reason']})", flush=True)
            continue
        config = load_shape_config(shape_name)
        shape = shape_from_config(config, name=shape_name, source=f"benchmarks/model_shapes/{shape_name}.json")
        ctx = {"args": args, "device": device, "config": config, "shape": shape, "shape_name": shape_name,
               "tokenizer": make_tokenizer(config), "peaks": peaks, "workdir": workdir,
               "time_left": lambda: deadline - time.monotonic()}
        print(f"gpu_smoke: {shape_name}/{phase} ({shape.num_params / 1e9:.2f}B parameters) ...", flush=True)
        phase_start = time.monotonic()
        try:
            if phase == "transformers":
                result = transformers_phase(ctx)
            else:
                result = fsdp_phase(ctx, offload=phase == "fsdp_offload")
            entry |= {"status": "ok", "parameters": shape.num_params} | result
        except Exception as exc:  # recorded; the next phase still runs
            entry |= {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
            print(f"gpu_smoke: {shape_name}/{phase}: {type(exc).__name__}: {exc}", flush=True)
        entry["phase_s"] = round(time.monotonic() - phase_start, 1)
        report.add(entry)
    shutil.rmtree(workdir, ignore_errors=True)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & NOT_NEEDED)
    report.write(total_s=round(time.monotonic() - started, 1), imported_but_not_needed=heavy)
    print(summary_table(report.data))
    print(f"gpu_smoke: results in {out}")
    return 0 if all(p["status"] != "error" for p in report.data["phases"]) else 1


def summary_table(data: dict[str, Any]) -> str:
    """The short table printed last."""
    rows = [f"matmul ceiling: {data['matmul_ceiling']['tflops']} TFLOP/s ({data['matmul_ceiling']['dtype']}); "
            f"datasheet peak: {data['peak_tflops_datasheet']} TFLOP/s"]
    header = (f"{'shape':<11} {'phase':<13} {'status':<8} {'step s':>7} {'tok/s':>9} {'MFU':>6} {'MFU/mm':>7} "
              f"{'alloc GiB':>9} {'est GiB':>8} {'w moved':>8} {'s':>6}")
    rows += [header, "-" * len(header)]
    for p in data["phases"]:
        update = p.get("update") or {}
        memory = p.get("memory") or {}
        gen = p.get("generate") or {}
        tokens = update.get("tokens_per_s", gen.get("new_tokens_per_s", ""))
        step = update.get("seconds", gen.get("seconds", ""))
        rows.append(
            f"{p['shape']:<11} {p['phase']:<13} {p['status']:<8} {step!s:>7} {tokens!s:>9} "
            f"{_pct(update.get('mfu_vs_datasheet')):>6} {_pct(update.get('mfu_vs_matmul')):>7} "
            f"{memory.get('max_memory_allocated_gib', memory.get('cpu_max_rss_gib', ''))!s:>9} "
            f"{(p.get('estimate') or {}).get('training_peak_gib', '')!s:>8} "
            f"{p.get('weights_changed_fraction_after_one_update', '')!s:>8} {p.get('phase_s', '')!s:>6}"
        )
        if p["status"] != "ok":
            rows.append(f"    {p.get('reason') or p.get('error')}")
    rows.append("MFU = 3 x forward FLOPs / step time / peak (formula in the JSON); "
                "'w moved' = share of sampled weights changed by one update at lr 1e-6")
    return "\n".join(rows)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
