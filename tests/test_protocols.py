"""The Protocols in userrl_core.types are exactly what the core calls.

A third-party simulator, environment and backend are written here from docs/plugins.md and the
Protocols alone, registered through a plugin object, and each is handed to the core behind a
proxy that refuses every attribute its Protocol does not list. One training step (with a
checkpoint) then runs through the real trainer: if the core called anything the Protocols do not
promise, the step would fail here.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from userrl_core import hookimpl
from userrl_core.config import load_recipe
from userrl_core.plugins import PluginManager
from userrl_core.training.build import build_components
from userrl_core.training.trainer import Trainer
from userrl_core.types import (
    Environment,
    GenerationResult,
    RolloutBackend,
    Simulator,
    SimulatorRequest,
    SimulatorResponse,
    StepResult,
    TrainingBackend,
)


def protocol_members(protocol: type) -> set[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return names


class ProtocolOnly:
    """Exposes only the members ``protocol`` lists; any other attribute is an AttributeError
    that names the Protocol, so a core call outside the contract fails the test."""

    def __init__(self, obj: Any, protocol: type):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_allowed", protocol_members(protocol))
        object.__setattr__(self, "_protocol", protocol.__name__)

    def __getattr__(self, name: str) -> Any:
        if name not in self._allowed:
            raise AttributeError(f"the core used {name!r}, which the {self._protocol} Protocol does not list")
        return getattr(self._obj, name)


# ------------------------------------------------------------------ written from the docs


class EchoUserSimulator:
    """A simulator per the Simulator Protocol: the simulated user repeats the last message."""

    name = "echo-user"

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self.calls += 1
        return SimulatorResponse(text=f"you said: {request.messages[-1]['content']}", prompt_tokens=3)

    def stats(self) -> dict[str, float]:
        return {"calls": float(self.calls), "prompt_tokens": 3.0 * self.calls}

    async def aclose(self) -> None:
        self.closed = True


class AskEnv:
    """An environment per the Environment Protocol: every action is sent to the simulator; the
    reward is 1.0 when the reply is longer than 20 characters."""

    def __init__(self, task, simulator):
        self.task, self.simulator, self.turns = task, simulator, 0

    async def reset(self):
        return [{"role": "user", "content": f"Task {self.task.id}: ask me something."}]

    async def step(self, action):
        self.turns += 1
        reply = await self.simulator.complete(
            SimulatorRequest(purpose="reply", messages=[{"role": "user", "content": action.content}]))
        return StepResult(observation=reply.text, reward=float(len(reply.text) > 20), done=self.turns >= 2)

    def metrics(self):
        return {"turns": float(self.turns)}


class BagOfWordsPolicy(torch.nn.Module):
    """A rollout and training backend per the RolloutBackend and TrainingBackend Protocols: a
    unigram policy (one logit per vocabulary entry), sampled with torch and trained with a
    REINFORCE-style loss on the advantages the trainer computes."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.logits = torch.nn.Parameter(torch.zeros(len(tokenizer)))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.closed = 0
        self.config_seen = None

    async def generate(self, request):
        g = torch.Generator().manual_seed(request.seed or 0)
        probs = torch.softmax(self.logits.detach(), -1)
        stop = request.stop_token_ids[0]
        out = []
        for _ in request.prompts:
            ids = torch.multinomial(probs, request.max_new_tokens - 1, replacement=True, generator=g).tolist()
            out.append(ids + [stop])
        return GenerationResult(out, None)

    def sync_weights(self, source):
        assert source is not None

    def compute_logprobs(self, batch, *, reference=False):
        with torch.no_grad():
            return self._logprobs(batch)

    def _logprobs(self, batch):
        logp = torch.log_softmax(self.logits, -1)[batch.input_ids]
        logp[:, 0] = 0.0
        return logp

    def update(self, batch):
        mask = batch.loss_mask.float()
        loss = -(batch.advantages * self._logprobs(batch) * mask).sum() / mask.sum().clamp(min=1)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"actor/pg_loss": float(loss.detach())}

    def save_hf(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "unigram.pt")

    def load_hf(self, path):
        self.load_state_dict(torch.load(Path(path) / "unigram.pt"))

    def save_state(self, path):
        torch.save(self.optimizer.state_dict(), Path(path) / "optimizer.pt")

    def load_state(self, path):
        self.optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt"))

    def apply_config(self, config):
        self.config_seen = config

    def close(self):
        self.closed += 1


class DocsPlugin:
    """Registers the three through the documented hooks; the core gets them behind proxies."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.simulator = EchoUserSimulator()
        self.policy = BagOfWordsPolicy(tokenizer)

    @hookimpl
    def register_environments(self, register):
        def factory(*, task, simulator, settings, seed, **kwargs):
            return ProtocolOnly(AskEnv(task, simulator), Environment)

        register("Ask", factory, description="asks the echo user")

    @hookimpl
    def register_simulators(self, register):
        register("echo-user", lambda *, config, **kwargs: ProtocolOnly(self.simulator, Simulator))

    @hookimpl
    def register_backends(self, register):
        register("training", "unigram", lambda *, config, **kwargs: ProtocolOnly(self.policy, TrainingBackend))
        register("rollout", "unigram", lambda *, config, trainer, **kwargs: ProtocolOnly(self.policy, RolloutBackend))


def test_the_protocols_list_what_the_core_calls():
    assert protocol_members(Simulator) == {"name", "complete", "stats", "aclose"}
    assert protocol_members(RolloutBackend) == {"tokenizer", "generate", "sync_weights", "close"}
    assert protocol_members(TrainingBackend) == {
        "tokenizer", "compute_logprobs", "update", "save_hf", "load_hf", "save_state", "load_state",
        "apply_config", "close"}
    assert isinstance(EchoUserSimulator(), Simulator)


def test_a_plugin_written_from_the_protocols_trains_one_step(tmp_path, smol_tokenizer):
    plugin = DocsPlugin(smol_tokenizer)
    manager = PluginManager()
    manager.add_plugin(plugin)
    from userrl_plugins.rewards import plugin as rewards

    manager.add_plugin(rewards)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": f"ask-{i}", "env_name": "Ask"} for i in range(2)]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": "unused-by-this-backend"},
        "data": {"train_files": ["tasks.json"], "train_batch_size": 2},
        "simulator": {"name": "echo-user"},
        "rollout": {"backend": "unigram", "n": 2, "max_turns": 2, "max_new_tokens": 5,
                    "action_format": "plain_text"},
        "actor": {"backend": "unigram", "ppo_mini_batch_size": 2},
        "trainer": {"total_training_steps": 1, "val_before_train": False, "report": False},
        "logging": {"progress": False},
    }))
    config = load_recipe(recipe)
    components = build_components(config, manager, total_steps=1, env_names={"Ask"})
    trainer = Trainer(config, tmp_path / "run", components)
    try:
        summary = asyncio.run(trainer.run(resume=False))
    finally:
        components.close()
    assert summary["status"] == "finished" and summary["steps"] == 1
    assert summary["simulator"]["calls"] == plugin.simulator.calls > 0
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "actor/pg_loss" in line and line["simulator/calls"] == plugin.simulator.calls
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert plugin.policy.closed == 2  # close() once per backend object (two proxies here)


def test_a_core_call_outside_the_protocol_is_refused():
    sim = ProtocolOnly(EchoUserSimulator(), Simulator)
    with pytest.raises(AttributeError, match="'reset_counters', which the Simulator Protocol does not list"):
        sim.reset_counters  # noqa: B018
