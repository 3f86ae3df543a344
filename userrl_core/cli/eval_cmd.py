"""``userrl eval CHECKPOINT_OR_RUN [--recipe R] [--split val] [--n 4]``.

Scores a checkpoint (a run folder means its best checkpoint) on a task split with n samples per
task and writes ``eval.json`` and transcripts; the metric names are those of validation inside
training (``val-core/<data_source>/reward/mean@n``).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a checkpoint (or a run's best) on a split; writes eval.json and transcripts.",
        description="Evaluate a checkpoint on a task split with n samples per task. A run folder means its best "
        "checkpoint; its config.yaml is the recipe unless --recipe is given.",
    )
    parser.add_argument("checkpoint", help="Run folder, checkpoint folder (with hf/) or Hugging Face model folder.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of --recipe.")
    parser.add_argument("--recipe", default=None, help="Recipe YAML (default: the run folder's config.yaml).")
    parser.add_argument("--split", default="val", help="'val', 'train' or a task file (default: val).")
    parser.add_argument("--n", type=int, default=4, help="Samples per task (mean@n; default 4).")
    parser.add_argument("--temperature", type=float, default=None,
                        help="Sampling temperature (default: the recipe's rollout.val_temperature).")
    parser.add_argument("--max-tasks", type=int, default=None, help="Evaluate on the first N tasks only.")
    parser.add_argument("--out", default=None, help="Output folder (default: <run>/eval/<checkpoint>_<split>_n<n>).")
    parser.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    from userrl_core.training.evaluate import evaluate

    result = evaluate(args.checkpoint, recipe=args.recipe, split=args.split, n=args.n, overrides=args.overrides,
                      out_dir=args.out, temperature=args.temperature, max_tasks=args.max_tasks)
    reward = result["reward"]
    print(f"{result['tasks']} tasks x {result['n']} samples: reward {reward if reward is None else f'{reward:.4f}'}"
          f" (failed episodes {result['failed_episodes']}, simulator cost ${result['simulator'].get('cost_usd', 0.0):.4f})")
    from userrl_core.training.evaluate import score_table

    for key, value in sorted(result["metrics"].items()):
        if key.startswith("val-core/"):
            print(f"  {key} = {value:.4f}")
    print(score_table(result["per_source"]))
    print(f"eval.json and scores.md: {result['out_dir']}/")
    return 0
