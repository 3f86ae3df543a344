"""Tiny IntentionGym training runs through the real CLI, for reliability tests.

:func:`tiny_recipe` writes a recipe that trains a tiny random-init model (the ``tiny_model_dir``
fixture) for a few steps against an OpenAI-compatible simulator at ``api_base`` (a loopback
server), with sizes small enough that a step takes a second or two on a CPU.
:func:`judge_or_user` tells the simulator's two kinds of request apart the way a real model
would see them: the judge's prompt asks for a JSON verdict about "covered" details.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TRAIN_PARQUET = ROOT / "data" / "intentiongym" / "userrl_splits" / "train.parquet"
VAL_PARQUET = ROOT / "data" / "intentiongym" / "userrl_splits" / "test.parquet"

JUDGE_VERDICT_NONE = '{"covered": [], "covered_detail_indices": [], "is_task_related": true}'
"""A judge verdict that covers nothing, readable under the 1-based ``covered`` protocol and
UserRL's 0-based ``covered_detail_indices`` one (plugins/intentiongym/prompts.py asks for one of
them; UserRL's gyms/IntentionGym/intentiongym/env/prompts.py for the other)."""


def is_judge_request(body: dict[str, Any] | None) -> bool:
    """True when a chat-completions body is IntentionGym's judge request (its prompt asks which
    details are covered), False for the simulated user's reply request."""
    messages = (body or {}).get("messages") or []
    return any("covered" in str(m.get("content", "")) for m in messages if isinstance(m, dict))


def tiny_recipe(folder: Path, model_dir: Path, *, api_base: str | None = None, **sections: dict) -> Path:
    """Write ``recipe.yaml`` into ``folder``; ``sections`` are merged over the defaults."""
    recipe: dict[str, Any] = {
        "defaults": [{"backend": "transformers"}, {"algorithm": "grpo_multiturn"}, {"env": "intentiongym"}, "_self_"],
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"train_files": [str(TRAIN_PARQUET)], "val_files": [str(VAL_PARQUET)], "train_batch_size": 2,
                 "val_max_tasks": 2, "max_prompt_length": 512},
        "simulator": {"name": "litellm", "model": "openai/test-model", "api_base": api_base, "timeout": 2.0,
                      "num_retries": 2, "retry_backoff": 0.01},
        "rollout": {"n": 2, "max_turns": 2, "max_new_tokens": 8, "max_episode_tokens": 512,
                    "action_format": "plain_text", "system_prompt": "Ask one short question."},
        "actor": {"lr": 1e-4, "ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2},
        "trainer": {"total_training_steps": 2, "test_freq": 2, "save_freq": -1, "val_before_train": True,
                    "device": "cpu", "max_ckpt_to_keep": 1},
        "logging": {"transcripts_per_step": 8},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(recipe.get(section), dict):
            recipe[section] = {**recipe[section], **values}
        else:
            recipe[section] = values
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def userrl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "userrl_core.cli", *args]


def run_userrl(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``userrl ARGS`` in a subprocess from the repository root (stdout and stderr captured)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(userrl_command(*args), cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def loopback_rollout_config(mode: str, api_base: str, *, turns: int, n: int, max_concurrency: int) -> Any:
    """The RunConfig of an engine-level test: IntentionGym episodes of plain-text questions
    against the ``litellm`` simulator on a loopback server, no retries."""
    from userrl_core.config.schema import RunConfig

    return RunConfig(
        model={"path": "unused"}, data={"train_files": ["unused"]},
        rollout={"mode": mode, "action_format": "plain_text", "n": n, "max_turns": turns, "max_new_tokens": 40,
                 "max_episode_tokens": 4096},
        simulator={"name": "litellm", "model": "openai/test-model", "api_base": api_base,
                   "num_retries": 0, "timeout": 30.0, "max_concurrency": max_concurrency},
    )
