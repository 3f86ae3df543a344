"""The fast "what is missing" check that GPU recipes hit first on a CPU machine."""

import os
import subprocess
import sys
import time

import pytest

from userrl_core.config.compose import load_recipe
from userrl_core.errors import MissingRequirementError
from userrl_core.preflight.requirements_check import check_requirements, find_missing, model_is_available


@pytest.fixture
def four_b(monkeypatch):
    monkeypatch.delenv("USERRL_MODEL_PATH", raising=False)
    monkeypatch.delenv("USERRL_SIMULATOR_MODEL_PATH", raising=False)
    return load_recipe("recipes/intention_4b.yaml")


def test_4b_recipe_on_a_cpu_machine_names_everything_missing(four_b):
    missing = find_missing(four_b, gpu_count=lambda: 0, module_available=lambda m: False, environ={})
    keys = {m.key for m in missing}
    assert keys == {"trainer.gpu_ids", "rollout.backend", "actor.backend", "model.path",
                    "simulator_server.enabled", "simulator_server.model"}
    gpu = next(m for m in missing if m.key == "trainer.gpu_ids")
    assert "[0, 1, 2]" in gpu.what and "0 visible GPU" in gpu.what


def test_everything_present_passes(four_b, tmp_path, monkeypatch):
    policy, sim = tmp_path / "policy", tmp_path / "sim"
    policy.mkdir(), sim.mkdir()
    (policy / "config.json").write_text("{}"), (sim / "config.json").write_text("{}")
    config = four_b.model_copy(deep=True)
    config.model.path = str(policy)
    config.simulator_server.model = str(sim)
    assert find_missing(config, gpu_count=lambda: 3, module_available=lambda m: True, environ={}) == []
    # two GPUs are not enough: the recipe uses physical ids 0 (simulator), 1 and 2 (training)
    assert [m.key for m in find_missing(config, gpu_count=lambda: 2, module_available=lambda m: True)] == [
        "trainer.gpu_ids"]


def test_api_key_is_required_only_when_no_server_is_managed(monkeypatch):
    monkeypatch.delenv("USERRL_MODEL_PATH", raising=False)
    config = load_recipe("recipes/intention_0.6b_dual_gpu.yaml")
    missing = find_missing(config, gpu_count=lambda: 2, module_available=lambda m: True, environ={})
    assert [m.key for m in missing] == ["model.path", "simulator.api_key_env"]
    assert "DASHSCOPE_API_KEY" in str(missing[1])
    with_key = find_missing(config, gpu_count=lambda: 2, module_available=lambda m: True,
                            environ={"DASHSCOPE_API_KEY": "sk-test"})
    assert [m.key for m in with_key] == ["model.path"]


def test_hub_id_in_the_local_cache_counts_as_available(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert not model_is_available("Org/Model")
    snap = tmp_path / "models--Org--Model" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert model_is_available("Org/Model")
    assert model_is_available("builtin:smollm2-135m-instruct")


def test_check_raises_one_error_naming_the_recipe(four_b):
    with pytest.raises(MissingRequirementError, match=r"intention_4b.yaml cannot run on this machine: .*model.path"):
        check_requirements(four_b, source="recipes/intention_4b.yaml", gpu_count=lambda: 0, environ={})


def test_check_is_fast_and_does_not_import_torch():
    code = (
        "import sys, time; t = time.time()\n"
        "from userrl_core.config.compose import load_recipe\n"
        "from userrl_core.preflight.requirements_check import find_missing\n"
        "c = load_recipe('recipes/intention_4b.yaml'); m = find_missing(c)\n"
        "print(len(m), 'torch' in sys.modules, round(time.time() - t, 2))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "USERRL_MODEL_PATH"}
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    count, torch_loaded, _ = out.stdout.split()
    assert int(count) >= 1 and torch_loaded == "False"
    assert time.time() - start < 5


def test_sglang_backend_needs_torch_memory_saver_too(four_b):
    """sglang's memory release runs on torch_memory_saver, which sglang itself does not require."""
    missing = find_missing(four_b, gpu_count=lambda: 3, module_available=lambda m: m != "torch_memory_saver",
                           environ={})
    rollout = next(m for m in missing if m.key == "rollout.backend")
    assert "'torch_memory_saver'" in rollout.what and "userrl[sglang]" in rollout.fix


def test_fsdp_on_local_gpu_ranks_needs_no_ray(tmp_path):
    """ray.enabled=false runs the fsdp ranks as local processes: Ray is then not a requirement
    (seen on a one-GPU machine without Ray, where the check refused a run that could work)."""
    config = load_recipe("recipes/quickstart.yaml")
    (tmp_path / "config.json").write_text("{}")
    config.model.path = str(tmp_path)
    config.actor.backend, config.trainer.device, config.trainer.n_gpus_per_node = "fsdp", "cuda", 1
    no_ray = lambda m: m != "ray"  # noqa: E731
    assert [m.key for m in find_missing(config, gpu_count=lambda: 1, module_available=no_ray)] == ["actor.backend"]
    config.ray.enabled = False
    assert find_missing(config, gpu_count=lambda: 1, module_available=no_ray) == []


def test_fsdp_on_cuda_without_gpu_ranks_is_one_config_error(tmp_path):
    """trainer.device=cuda with no GPU ranks used to start ray.cpu_ranks processes that each
    called cuda:<rank> ("invalid device ordinal" from rank 1 on a one-GPU machine)."""
    from userrl_core.errors import ConfigError
    from userrl_plugins.backends.fsdp_plugin import make_training_backend

    config = load_recipe("recipes/quickstart.yaml")
    config.actor.backend, config.trainer.device, config.trainer.n_gpus_per_node = "fsdp", "cuda", 0
    with pytest.raises(ConfigError, match=r"trainer.n_gpus_per_node"):
        make_training_backend(config=config)


def test_a_third_party_factory_declares_its_requirements(tmp_path):
    """The pre-flight asks the factory the recipe names; it knows no backend by name."""
    from userrl_core import hookimpl
    from userrl_core.plugins import PluginManager
    from userrl_core.preflight.memory_estimate import geometry_from_config
    from userrl_core.types import Requirements

    def make_rollout(*, config, **kwargs):
        raise AssertionError("the pre-flight never builds a backend")

    make_rollout.requirements = lambda config: Requirements(
        modules={"warp_drive": "pip install warp-drive"}, files={"env.X.corpus": str(tmp_path / "absent.json")},
        gpu_memory_fraction=0.3, why="engines warp")

    class ThirdParty:
        @hookimpl
        def register_backends(self, register):
            register("rollout", "warp", make_rollout)

    manager = PluginManager()
    manager.add_plugin(ThirdParty())
    config = load_recipe("recipes/quickstart.yaml", ["rollout.backend=warp"])
    missing = find_missing(config, gpu_count=lambda: 0, module_available=lambda m: m != "warp_drive",
                           environ={}, registry=manager.registry)
    assert [(m.key, m.fix) for m in missing] == [("rollout.backend", "pip install warp-drive"),
                                                 ("env.X.corpus", "fix the path")]
    assert "'warp' needs the Python module(s) 'warp_drive' (engines warp)" in str(missing[0])
    assert geometry_from_config(config, registry=manager.registry).rollout_mem_fraction == 0.3
