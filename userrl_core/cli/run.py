"""``userrl run RECIPE [overrides...] [--dry-run] [--resume] [--run-dir DIR]``.

The recipe is composed with its Hydra overrides, validated, and every plugin name in it is
checked against the registry before anything heavy happens. ``--dry-run`` stops there and
prints the resolved config and the execution plan (devices, batch geometry, plugins); no model
is loaded.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import yaml

from userrl_core.config import check_plugin_names, load_recipe
from userrl_core.exit_codes import exit_code_for
from userrl_core.redaction import redact_config
from userrl_core.config.schema import RunConfig
from userrl_core.preflight.plan import build_plan, format_plan
from userrl_core.plugins import get_plugin_manager
from userrl_core.preflight.requirements_check import check_requirements


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="Train from a recipe (or --dry-run: print the resolved config and the plan).",
        description="Train from a recipe. Overrides are Hydra overrides: trainer.total_epochs=3 simulator=dashscope.",
    )
    parser.add_argument("recipe", help="Recipe YAML file.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys or config groups).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Validate and print the resolved config and the execution plan; load no model.")
    parser.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in the run folder.")
    parser.add_argument("--run-dir", default=None, help="Run folder (default: trainer.run_dir or a new folder).")
    parser.set_defaults(func=run_command)


def load_checked_recipe(recipe: str, overrides: list[str], *, dry_run: bool = False) -> tuple[RunConfig, Any]:
    """Compose, validate and check plugin names; returns the config and the plugin manager.
    A dry run accepts plugins that are unavailable here (the plan says so)."""
    config = load_recipe(recipe, overrides)
    if not dry_run:  # GPUs, extras, model, API key: every missing thing named at once, in seconds
        check_requirements(config, source=recipe)
    manager = get_plugin_manager()
    check_plugin_names(config, manager.registry, source=recipe, allow_unavailable=dry_run)
    return config, manager


def count_train_tasks(config: RunConfig, registry: Any) -> int:
    """Reads every task file the run will open (train and validation; not the model), so a
    missing file or a bad row fails the dry run too; returns the train task count (it sizes
    the epoch)."""
    from userrl_core.data import load_tasks

    data = config.data
    tasks = load_tasks(data.train_files, registry, max_tasks=data.train_max_tasks, env_settings=config.env)
    if data.val_files:
        load_tasks(data.val_files, registry, max_tasks=data.val_max_tasks, env_settings=config.env)
    return len(tasks)


def resolved_yaml(config: RunConfig) -> str:
    """The resolved config as YAML. It holds environment-variable names, never secret values
    (secret-named settings are masked as well)."""
    return yaml.safe_dump(redact_config(config.model_dump(mode="json")), sort_keys=False)


def run_command(args: argparse.Namespace) -> int:
    config, manager = load_checked_recipe(args.recipe, args.overrides, dry_run=args.dry_run)
    if not getattr(args, "verbose", False):  # -v (DEBUG) wins over the recipe's logging.level
        logging.getLogger().setLevel(config.logging.level)
    if args.dry_run:
        plan = build_plan(config, manager, num_train_tasks=count_train_tasks(config, manager.registry))
        print("# Resolved config")
        print(resolved_yaml(config))
        print(format_plan(plan))
        return 0
    from userrl_core.training.trainer import run_training

    from userrl_core.training.progress import print_summary

    summary = run_training(config, recipe_path=args.recipe, resume=args.resume, run_dir=args.run_dir)
    status = summary.get("status", "finished")
    print_summary(summary)
    return exit_code_for(status)
