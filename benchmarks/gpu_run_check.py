"""End-to-end check that ``userrl run`` trains on one device: the real CLI as a subprocess.

Runs ``recipes/gpu_run_check.yaml`` (GRPO on FunctionGym, no simulator, two steps) with a tiny
randomly initialised Llama-shaped model that uses SmolLM2-135M-Instruct's tokenizer and chat
template, then checks the run folder: exit code, steps finished, ``metrics.jsonl`` rows
(reward, grad norm, timing), the saved checkpoint (loaded back with ``transformers``), time
per step and ``perf/max_memory_allocated_gb`` when the backend emits it. A JSON summary goes to
``--out``::

    python3 benchmarks/gpu_run_check.py --make-model /tmp/tiny            # build the model folder
    python3 benchmarks/gpu_run_check.py --device cuda --model /tmp/tiny --out check.json
    python3 benchmarks/gpu_run_check.py --device cpu --model /tmp/tiny --out check.json  # tests

The task files are passed as absolute paths from this checkout, so an installed wheel of
userrl (which does not carry ``data/``) works too. Exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "gpu_run_check.yaml"
FUNCTIONGYM_DATA = REPO / "data" / "userrl-gyms" / "functiongym"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")
TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}


def make_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama (bf16 safetensors, tied embeddings) with SmolLM2's tokenizer files."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from userrl_core.models import resolve_model_path

    source = resolve_model_path("builtin:smollm2-135m-instruct")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_SHAPE)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # bf16 on disk keeps the folder small
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def userrl_command() -> list[str]:
    """The installed ``userrl`` script when on PATH, else the same CLI through ``-m``."""
    script = shutil.which("userrl")
    return [script] if script else [sys.executable, "-m", "userrl_core.cli"]


def run_overrides(model: Path, device: str, dtype: str, backend: str, steps: int) -> list[str]:
    return [
        f"model.path={model.resolve()}",
        f"model.dtype={dtype}",
        f"trainer.device={device}",
        f"actor.backend={backend}",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={steps}",
        f"data.train_files=[{FUNCTIONGYM_DATA / 'train.parquet'}]",
        f"data.val_files=[{FUNCTIONGYM_DATA / 'test.parquet'}]",
        f"+env.FunctionGym.functions_file={FUNCTIONGYM_DATA / 'functions.json'}",
    ]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    found = sorted(run_dir.rglob("metrics.jsonl"))
    if not found:
        return []
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]


def pick(row: dict[str, Any], *fragments: str) -> dict[str, Any]:
    """The row's numeric entries whose key contains any of ``fragments``."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and any(f in k for f in fragments)}


def find_checkpoint_model(run_dir: Path) -> Path | None:
    """The newest folder under the run that holds a saved HF model (config.json + safetensors)."""
    candidates = [p.parent for p in run_dir.rglob("config.json") if any(p.parent.glob("*.safetensors"))]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def check_run(args: argparse.Namespace, backend: str, steps: int, run_dir: Path) -> dict[str, Any]:
    cmd = [*userrl_command(), "run", str(args.recipe), "--run-dir", str(run_dir),
           *run_overrides(args.model, args.device, args.dtype, backend, steps), *args.override]
    print("+", " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, timeout=args.timeout)
    wall = time.perf_counter() - started
    rows = [r for r in read_metrics(run_dir) if "step" in r or "training/global_step" in r]
    train_rows = [r for r in rows if pick(r, "grad_norm")]
    result: dict[str, Any] = {"backend": backend, "exit_code": proc.returncode, "wall_s": round(wall, 2),
                              "steps_expected": steps, "steps_finished": len(train_rows),
                              "metrics_rows": len(rows)}
    result["per_step"] = [{**pick(r, "step"), **pick(r, "reward", "score"), **pick(r, "grad_norm"),
                           **pick(r, "timing", "time"), **pick(r, "perf/")} for r in train_rows]
    step_times = [v for r in train_rows for k, v in r.items() if k == "perf/time_per_step"]
    result["time_per_step_s"] = step_times or None
    mem = [r["perf/max_memory_allocated_gb"] for r in rows if "perf/max_memory_allocated_gb" in r]
    result["max_memory_allocated_gb"] = max(mem) if mem else "not emitted"
    ckpt = find_checkpoint_model(run_dir)
    result["checkpoint"] = str(ckpt) if ckpt else None
    if ckpt:
        from transformers import AutoModelForCausalLM
        loaded = AutoModelForCausalLM.from_pretrained(str(ckpt))
        result["checkpoint_loads"] = True
        result["checkpoint_parameters"] = sum(p.numel() for p in loaded.parameters())
    result["ok"] = bool(proc.returncode == 0 and len(train_rows) >= steps and ckpt
                        and all(pick(r, "grad_norm") for r in train_rows))
    print(json.dumps(result, indent=2), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-model", type=Path, help="Build the tiny model folder here and exit.")
    parser.add_argument("--model", type=Path, help="Model folder (from --make-model).")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default=None, help="model.dtype (default bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fsdp-steps", type=int, default=0,
                        help="Also run this many steps with actor.backend=fsdp (0: skip).")
    parser.add_argument("--run-root", type=Path, default=None, help="Where the run folders go (default: a tmp dir).")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("gpu_run_check.json"))
    parser.add_argument("override", nargs="*", help="Extra key=value overrides for `userrl run`.")
    args = parser.parse_args(argv)
    if args.make_model:
        print(make_model(args.make_model))
        return 0
    if not args.model:
        parser.error("--model is required (build one with --make-model DIR)")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    import tempfile
    run_root = args.run_root or Path(tempfile.mkdtemp(prefix="userrl-run-check-"))
    summary: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "python": sys.version.split()[0],
                               "runs": []}
    runs = [("transformers", args.steps)] + ([("fsdp", args.fsdp_steps)] if args.fsdp_steps else [])
    for backend, steps in runs:
        summary["runs"].append(check_run(args, backend, steps, run_root / backend))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    summary["ok"] = all(r["ok"] for r in summary["runs"])
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu_run_check: {'OK' if summary['ok'] else 'FAILED'} -> {args.out}", flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
