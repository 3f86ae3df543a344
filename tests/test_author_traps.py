"""What a third-party environment author meets, with the fixture distribution
tests/fixtures/userrl-authortraps (written from docs/plugins.md alone): an environment that writes
its own opening and needs no simulator, a ``step()`` that raises, rewards that are not finite
floats, and two plugins registering the same name."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest
import yaml

from fixtures.distributions import AUTHOR_TRAPS_PACKAGE, cli, install_package_folder
from userrl_core.config import validate_config
from userrl_core.errors import ConfigError, PluginConflictError
from userrl_core.plugins import PluginManager
from userrl_core.registry import Kind
from userrl_core.rollout import RolloutEngine
from userrl_core.training.build import build_simulator
from userrl_core.types import EpisodeStatus, GenerationResult, Task

SYSTEM_PROMPT = "Answer with the number only."


@pytest.fixture(scope="module")
def traps(tmp_path_factory):
    """The fixture package, importable from a folder on sys.path / PYTHONPATH."""
    return install_package_folder(AUTHOR_TRAPS_PACKAGE, tmp_path_factory.mktemp("authortraps"))


@pytest.fixture
def manager(traps, monkeypatch):
    for var in ("USERRL_STRICT_PLUGINS", "USERRL_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(traps))
    loaded = PluginManager()
    loaded.load_entry_points()
    yield loaded
    for name in [m for m in sys.modules if m.startswith("userrl_authortraps")]:
        del sys.modules[name]


def task(task_id: str, env_name: str, **payload) -> Task:
    return Task(id=task_id, env_name=env_name, data_source=env_name.lower(), prompt=[],
                payload={"id": task_id, "env_name": env_name, **payload}, source=f"tasks.json row {task_id}")


class SayPolicy:
    """Rollout-backend test double: answers every prompt with the same text, tokenised with the
    real SmolLM2 tokenizer and closed with its end-of-turn token, as a sampler would. Records the
    prompts it was given (decoded) so a test can read what the policy saw."""

    def __init__(self, tokenizer, text: str):
        self.tokenizer, self.text, self.seen = tokenizer, text, []

    async def generate(self, request):
        ids = self.tokenizer.encode(self.text, add_special_tokens=False) + [
            self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.seen += [self.tokenizer.decode(p) for p in request.prompts]
        return GenerationResult([list(ids) for _ in request.prompts], None)

    def sync_weights(self, source) -> None: ...

    def close(self) -> None: ...


def engine_for(manager, policy, **rollout) -> RolloutEngine:
    config = validate_config({
        "model": {"path": "m"}, "data": {"train_files": ["t.json"]},
        "rollout": {"action_format": "plain_text", "max_turns": 2, "n": 1, **rollout},
    })
    return RolloutEngine(policy, manager.registry, None, config)


def test_own_opening_reaches_the_policy_under_the_recipe_system_prompt(manager, smol_tokenizer):
    policy = SayPolicy(smol_tokenizer, "3")
    engine = engine_for(manager, policy, system_prompt=SYSTEM_PROMPT)
    result = asyncio.run(engine.run([task("count-3", "Countdown", target=3)], seed=0))
    (episode,) = result.episodes
    assert episode.status is EpisodeStatus.OK and episode.turn_rewards == [1.0]
    assert episode.messages[:2] == [{"role": "system", "content": SYSTEM_PROMPT},
                                    {"role": "user", "content": "Countdown opening: say the number 3."}]
    assert SYSTEM_PROMPT in policy.seen[0] and "Countdown opening: say the number 3." in policy.seen[0]


def test_a_raising_step_fails_its_episode_only_and_is_counted(manager, smol_tokenizer, caplog):
    engine = engine_for(manager, SayPolicy(smol_tokenizer, "2"), n=2)
    tasks = [task("flaky-1", "Flaky", target=2, raise_on_turn=1), task("count-2", "Countdown", target=2)]
    with caplog.at_level(logging.WARNING, logger="userrl"):
        result = asyncio.run(engine.run(tasks, seed=0))
    flaky = [e for e in result.episodes if e.task.env_name == "Flaky"]
    fine = [e for e in result.episodes if e.task.env_name == "Countdown"]
    assert [e.status for e in flaky] == [EpisodeStatus.ENV_ERROR] * 2
    assert all(e.end_reason == "env_error" and "KeyError" in e.error for e in flaky)
    assert [e.status for e in fine] == [EpisodeStatus.OK] * 2 and fine[0].turn_rewards == [1.0]
    assert result.metrics["rollout/env_errors"] == 2.0
    assert result.metrics["rollout/env_error_rate"] == 0.5
    assert "environment 'Flaky' step() for task 'flaky-1'" in caplog.text


@pytest.mark.parametrize("reward", ["0.5", None, float("nan"), float("inf"), True])
def test_a_reward_that_is_not_a_finite_number_is_an_env_error_naming_env_and_task(manager, smol_tokenizer, reward):
    engine = engine_for(manager, SayPolicy(smol_tokenizer, "x"))
    result = asyncio.run(engine.run([task("bad-1", "BadReward", reward=reward)], seed=0))
    (episode,) = result.episodes
    assert episode.status is EpisodeStatus.ENV_ERROR
    assert episode.error.startswith("environment 'BadReward' step() for task 'bad-1'")
    assert f"returned reward {reward!r}" in episode.error
    assert episode.turns[0].reward == 0.0 and result.metrics["rollout/env_errors"] == 1.0


def test_a_contested_name_fails_only_its_lookup_naming_both_plugins(manager):
    (conflict,) = manager.registry.conflicts()
    assert (conflict.kind, conflict.name) == (Kind.ENVIRONMENT, "Twin")
    assert all(manager.plugins[p].status == "ok" for p in ("authortraps", "authortraps-twin"))
    assert manager.registry.get(Kind.ENVIRONMENT, "Countdown") is not None
    with pytest.raises(PluginConflictError) as info:
        manager.registry.get(Kind.ENVIRONMENT, "Twin", key_path="env_name")
    message = str(info.value)
    assert "'authortraps'" in message and "'authortraps-twin'" in message
    assert "USERRL_DISABLE_PLUGINS=authortraps-twin" in message


def test_plugins_list_and_doctor_show_the_conflict_and_a_run_needing_it_stops(traps, tmp_path):
    listing = cli("plugins", "list", pythonpath=[traps])
    assert listing.returncode == 0, listing.stderr
    assert "CONFLICTS" in listing.stdout and "environment 'Twin' is registered by 2 plugins" in listing.stdout
    doctor = cli("doctor", pythonpath=[traps])
    assert "FAIL  environment Twin: environment 'Twin' is registered by 2 plugins" in doctor.stdout

    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": "twin-1", "env_name": "Twin", "target": 1}]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": "m"}, "data": {"train_files": [str(tasks)]}}))
    run = cli("run", str(recipe), "--dry-run", pythonpath=[traps])
    assert run.returncode == 2
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("userrl: error:")]
    assert "row 0" in line and "'authortraps'" in line and "'authortraps-twin'" in line
    assert "USERRL_DISABLE_PLUGINS" in line


def test_simulate_reports_a_raising_step_on_one_line(traps):
    result = cli("simulate", "Flaky", "--tasks", str(AUTHOR_TRAPS_PACKAGE / "userrl_authortraps" / "tasks.json"),
                 pythonpath=[traps], stdin="2\n")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "environment 'Flaky' step() for task 'flaky-1' raised KeyError" in result.stderr


def test_simulator_none_is_refused_when_an_environment_needs_one(manager, monkeypatch):
    from userrl_core.registry import Kind as K

    manager.registry.add(K.ENVIRONMENT, "Chatty", lambda **kw: None, plugin="test")
    config = validate_config({"model": {"path": "m"}, "data": {"train_files": ["t.json"]},
                              "simulator": {"name": "none"}})
    assert build_simulator(config, manager.registry, {"Countdown", "Flaky"}) is None
    with pytest.raises(ConfigError, match="simulator.name: 'none', but environment\\(s\\) Chatty need a simulator"):
        build_simulator(config, manager.registry, {"Countdown", "Chatty"})
    default = validate_config({"model": {"path": "m"}, "data": {"train_files": ["t.json"]}})
    assert build_simulator(default, manager.registry, {"Countdown"}) is None  # nothing configured, nothing built


def test_training_one_step_without_a_simulator_through_the_cli(traps, tiny_model_dir, tmp_path):
    """Countdown (own opening, no simulator), a raising Flaky and a BadReward task train one step:
    the run finishes, the policy saw the opening under the system prompt, and the broken
    episodes are counted as environment errors, not simulator failures."""
    rows = [{"id": "count-3", "env_name": "Countdown", "target": 3},
            {"id": "count-5", "env_name": "Countdown", "target": 5},
            {"id": "flaky-1", "env_name": "Flaky", "target": 2, "raise_on_turn": 1},
            {"id": "bad-str", "env_name": "BadReward", "reward": "0.5"}]
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": [str(tasks)], "train_batch_size": 4, "shuffle": False},
        "simulator": {"name": "none"},
        "rollout": {"n": 2, "max_turns": 2, "max_new_tokens": 6, "action_format": "plain_text",
                    "system_prompt": SYSTEM_PROMPT},
        "actor": {"ppo_mini_batch_size": 4, "ppo_micro_batch_size_per_gpu": 4},
        "trainer": {"total_training_steps": 1, "device": "cpu", "val_before_train": False, "report": False,
                    "run_dir": str(tmp_path / "run")},
        "logging": {"progress": False, "transcripts_per_step": 8},
    }))
    result = cli("run", str(recipe), pythonpath=[traps], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 1
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert line["rollout/env_errors"] == 4.0 and line["simulator/failed_episodes"] == 0.0
    assert "actor/pg_loss" in line  # the Countdown episodes were trained on
    episodes = [json.loads(x) for x in next((run / "transcripts").glob("step_*.jsonl")).read_text().splitlines()]
    countdown = next(e for e in episodes if e["task_id"] == "count-3")
    assert countdown["messages"][:2] == [{"role": "system", "content": SYSTEM_PROMPT},
                                         {"role": "user", "content": "Countdown opening: say the number 3."}]
    statuses = {e["task_id"]: e["status"] for e in episodes}
    assert statuses["flaky-1"] == "env_error" and statuses["bad-str"] == "env_error"
    assert "environment 'Flaky' step() for task 'flaky-1'" in result.stderr


def test_validation_in_batches_of_val_batch_size_scores_like_one_pass(manager, smol_tokenizer):
    from userrl_core.training.validation import run_validation

    policy = SayPolicy(smol_tokenizer, "3")
    engine = engine_for(manager, policy)
    tasks = [task("count-3", "Countdown", target=3), task("count-5", "Countdown", target=5),
             task("count-3b", "Countdown", target=3)]
    whole, whole_metrics = asyncio.run(run_validation(engine, tasks, 2, seed=0, batch_size=None))
    calls = len(policy.seen)
    batched, batched_metrics = asyncio.run(run_validation(engine, tasks, 2, seed=0, batch_size=2))
    assert batched_metrics == whole_metrics
    assert whole_metrics["val-core/countdown/reward/mean@2"] == 2 / 3
    assert [e.group for e in batched] == [0, 0, 1, 1, 2, 2]  # groups numbered over the whole pass
    assert len(policy.seen) - calls == calls  # the same prompts, over two engine runs
