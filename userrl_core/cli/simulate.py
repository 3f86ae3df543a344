"""``userrl simulate ENV_NAME``: play one episode of an environment by hand.

Generic over environments: the agent's actions come from stdin, one per line — a plain line is
an ``action`` (a question, a guess, a move); ``/CHOICE TEXT`` or UserRL's ``[CHOICE] TEXT`` picks
another choice (``/search test``, ``[answer] 42``) and ``/finish`` ends the episode. Each turn prints the environment's reply, the reward, ``done`` and the step's
info; the end prints the environment's ``metrics()``. Useful to check an environment plugin
and a simulator before training against them.

With ``--recipe`` the opening is what training sees: the recipe's ``rollout.system_prompt``
applied to what ``reset()`` returns (the one rule, :mod:`userrl_core.rollout.env_contract`). An
exception inside the environment is reported on one line naming the environment, the task and
the call (exit status 2), not as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import DataError, PluginError, UserError
from userrl_core.plugins import get_plugin_manager
from userrl_core.registry import Kind
from userrl_core.rollout.actions import CHOICES, parse_reply
from userrl_core.rollout.env_contract import bad_reward, chat_messages, finite_reward, opening_messages
from userrl_core.types import NO_SIMULATOR, Action, StepResult, StepStatus, Task


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="Play one episode of an environment by hand (actions from stdin).",
        description="Actions from stdin, one per line: a plain line is an action, "
        "'/search TEXT' or '[search] TEXT' searches, '/answer TEXT' answers, '/finish' ends the episode.",
    )
    parser.add_argument("env_name", help="Environment name, as registered (`userrl plugins list`).")
    parser.add_argument("--tasks", default=None,
                        help="Task file (parquet, JSON or JSONL); default: the environment's own default tasks.")
    parser.add_argument("--task", default=None, help="Task id to play (default: the first task of ENV_NAME).")
    parser.add_argument("--simulator", default=None,
                        help=f"Simulator name (default: the recipe's, else 'local'; '{NO_SIMULATOR}' when the "
                        "environment declares needs_simulator = False); '{NO_SIMULATOR}' for none.")
    parser.add_argument("--recipe", default=None, help="Recipe whose simulator and env settings to use.")
    parser.add_argument("--seed", type=int, default=0, help="Episode seed.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe.")
    parser.set_defaults(func=simulate_command)


def parse_action(line: str) -> Action:
    """``/CHOICE TEXT`` (``/answer 42``, ``/finish``) or ``[CHOICE] TEXT`` -> that choice;
    anything else -> action."""
    text = line.strip()
    for choice in CHOICES:
        command = f"/{choice}"
        if text == command or text.startswith(command + " "):
            return Action(choice, text[len(command):].strip())
    parsed = parse_reply(text, action_format="plain_text")
    return parsed.action if parsed.action is not None else Action("action", text)


def _settings(args: argparse.Namespace, needs_simulator: bool
              ) -> tuple[SimulatorConfig | None, dict[str, dict[str, Any]], str | None]:
    """The simulator settings (None: no simulator), the env settings and the system prompt."""
    if args.recipe is None:
        if args.overrides:
            raise UserError(f"overrides {args.overrides} need --recipe")
        name = args.simulator or (SimulatorConfig().name if needs_simulator else NO_SIMULATOR)
        return (None if name == NO_SIMULATOR else SimulatorConfig(name=name)), {}, None
    from userrl_core.config import load_recipe

    config = load_recipe(args.recipe, args.overrides)
    system_prompt = config.rollout.system_prompts.get(args.env_name, config.rollout.system_prompt)
    name = args.simulator or (config.simulator.name if needs_simulator else NO_SIMULATOR)
    if name == NO_SIMULATOR:
        return None, config.env, system_prompt
    return config.simulator.model_copy(update={"name": name}), config.env, system_prompt


def pick_task(tasks: list[Task], env_name: str, task_id: str | None, source: str) -> Task:
    mine = [t for t in tasks if t.env_name == env_name]
    if not mine:
        raise DataError(f"{source}: no task with env_name {env_name!r}")
    if task_id is None:
        return mine[0]
    for task in mine:
        if task.id == task_id:
            return task
    shown = ", ".join(t.id for t in mine[:10]) + (", ..." if len(mine) > 10 else "")
    raise DataError(f"--task: no task {task_id!r} in {source}; ids: {shown}")


def simulate_command(args: argparse.Namespace) -> int:
    from userrl_core.data import load_tasks

    registry = get_plugin_manager().registry
    factory = registry.get(Kind.ENVIRONMENT, args.env_name, key_path="ENV_NAME")
    sim_config, env_settings, system_prompt = _settings(args, getattr(factory, "needs_simulator", True) is not False)
    if args.recipe is not None:
        from userrl_core.config.compose import check_plugin_settings

        check_plugin_settings(registry.entry_or_none(Kind.ENVIRONMENT, args.env_name),
                              env_settings.get(args.env_name, {}), f"env.{args.env_name}", args.recipe)
    tasks_file = args.tasks or getattr(factory, "default_tasks", None)
    if tasks_file is None:
        raise UserError(f"--tasks is required: environment {args.env_name!r} has no default tasks")
    task_set = load_tasks([str(tasks_file)], registry, env_settings=env_settings)
    task = pick_task(task_set.tasks, args.env_name, args.task, str(tasks_file))
    simulator = None
    if sim_config is not None:
        sim_factory = registry.get(Kind.SIMULATOR, sim_config.name, key_path="--simulator")
        simulator = sim_factory(config=sim_config)
    try:
        env = factory(task=task, simulator=simulator, settings=env_settings.get(args.env_name, {}), seed=args.seed)
    except Exception as exc:
        raise _env_failure(task, "factory", exc) from None
    return asyncio.run(_play(env, task, simulator, system_prompt))


def _env_failure(task: Task, call: str, exc: BaseException) -> PluginError:
    return PluginError(f"environment {task.env_name!r} {call}() for task {task.id!r} raised "
                       f"{type(exc).__name__}: {exc} (in training this episode would fail as an environment error)")


async def _call(task: Task, call: str, coro: Any) -> Any:
    try:
        return await coro
    except UserError:
        raise
    except Exception as exc:
        from userrl_core.types import SimulatorError

        if isinstance(exc, SimulatorError):
            raise UserError(str(exc)) from None
        raise _env_failure(task, call, exc) from None


async def _sync(fn: Any) -> Any:
    return fn()


async def _play(env: Any, task: Task, simulator: Any, system_prompt: str | None) -> int:
    interactive = sys.stdin.isatty()
    try:
        opening = await _call(task, "reset", env.reset())
        if chat_messages(opening) is None:
            raise PluginError(f"environment {task.env_name!r} reset() for task {task.id!r} returned {opening!r:.80}, "
                              "not a non-empty list of chat messages")
        messages = opening_messages(opening, system_prompt)
        print(f"task {task.id} ({task.env_name}, {task.data_source})")
        for message in messages:
            print(f"[{message['role']}] {message['content']}")
        turn = 0
        while True:
            if interactive:
                print("agent> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                print("end of input: episode not finished")
                break
            if not line.strip():
                continue
            turn += 1
            action = parse_action(line)
            result = await _call(task, "step", env.step(action))
            where = f"environment {task.env_name!r} step() for task {task.id!r}"
            if not isinstance(result, StepResult):
                raise PluginError(f"{where} returned {type(result).__name__}, not a StepResult")
            if result.status is StepStatus.OK and finite_reward(result.reward) is None:
                raise PluginError(f"{where} {bad_reward(result.reward)}")
            print(f"turn {turn}: {action.choice} {action.content!r}")
            if result.status is not StepStatus.OK:
                print(f"  step failed ({result.status.value}): {result.error}")
            print(f"  reply: {result.observation}")
            print(f"  reward: {result.reward}  done: {result.done}")
            if result.info:
                print(f"  info: {json.dumps(result.info, default=str, sort_keys=True)}")
            if result.done:
                break
        metrics = await _call(task, "metrics", _sync(env.metrics))
        print(f"metrics: {json.dumps(metrics, default=str, sort_keys=True)}")
    finally:
        if simulator is not None:
            await simulator.aclose()
    return 0
