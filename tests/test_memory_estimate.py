"""The dry run's per-GPU memory estimate: shapes, arithmetic, offloads, recipes; and the estimate
against real measurements: ``benchmarks/results/gpu_smoke_h200.json`` is one run of
``benchmarks/gpu_smoke.py`` on one NVIDIA H200 (torch 2.11, transformers 5.17), with
``torch.cuda.max_memory_allocated`` of every phase for Qwen3-0.6B and Qwen3-4B. The estimate is
recomputed with today's code from the run's ``settings`` and ``benchmarks/model_shapes/`` and
must land within ``TOLERANCE`` of each measured phase."""

import json
from pathlib import Path

import pytest

from userrl_core.config.compose import load_recipe
from userrl_core.preflight.memory_estimate import (
    GB,
    KNOWN_SHAPES,
    Geometry,
    estimate,
    estimate_for_config,
    find_model_shape,
    format_estimate,
    phase_estimate_bytes,
    shape_from_config,
)


def test_known_shapes_give_the_published_parameter_counts():
    # Qwen3-0.6B: 0.6B (0.44B without embeddings); Qwen3-4B: 4.0B (3.6B without embeddings).
    assert KNOWN_SHAPES["Qwen/Qwen3-0.6B"].num_params == pytest.approx(0.596e9, rel=0.01)
    assert KNOWN_SHAPES["Qwen/Qwen3-4B"].num_params == pytest.approx(4.02e9, rel=0.01)
    four_b = KNOWN_SHAPES["Qwen/Qwen3-4B"]
    non_embedding = four_b.num_params - four_b.vocab_size * four_b.hidden_size
    assert non_embedding == pytest.approx(3.6e9, rel=0.02)


def test_shape_is_read_from_config_json_when_the_folder_exists(tmp_path):
    config = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = find_model_shape(str(tmp_path))
    assert shape.head_dim == 16 and shape.num_key_value_heads == 2
    assert shape.source.endswith("config.json")
    # untied head counted twice
    assert shape.num_params == 2 * shape.layer_params + 2 * 1000 * 64 + 64


def test_local_folder_named_like_a_known_model_falls_back_to_the_table(tmp_path):
    shape = find_model_shape(str(tmp_path / "Qwen3-4B"))
    assert shape is KNOWN_SHAPES["Qwen/Qwen3-4B"]
    assert find_model_shape(str(tmp_path / "mystery-model")) is None


def test_offloads_move_state_to_the_cpu_and_sharding_divides_it():
    shape = KNOWN_SHAPES["Qwen/Qwen3-4B"]
    geo = Geometry(num_gpus=2, micro_batch=4, seq_len=2048)
    none = estimate(shape, geo, param_offload=False, optimizer_offload=False, activation_offload=False)
    full = estimate(shape, geo, param_offload=True, optimizer_offload=True, activation_offload=True)
    # fp32 sharded params + fp32 grads + 2 fp32 Adam moments = 16 bytes/param over 2 GPUs
    state = none.components["parameters"] + none.components["gradients"] + none.components["optimizer state"]
    assert state == pytest.approx(16 * shape.num_params / 2)
    assert "parameters" not in full.components and full.cpu_components["parameters"] == none.components["parameters"]
    assert full.training_peak < none.training_peak - state + 1
    one_gpu = estimate(shape, Geometry(num_gpus=1, micro_batch=4, seq_len=2048),
                       param_offload=False, optimizer_offload=False, activation_offload=False)
    assert one_gpu.components["optimizer state"] == pytest.approx(2 * none.components["optimizer state"])


def test_gradient_checkpointing_cuts_activations_and_logits_scale_with_tokens():
    shape = KNOWN_SHAPES["Qwen/Qwen3-0.6B"]
    with_gc = estimate(shape, Geometry(2, 4, 4096, gradient_checkpointing=True),
                       param_offload=False, optimizer_offload=False, activation_offload=False)
    without = estimate(shape, Geometry(2, 4, 4096, gradient_checkpointing=False),
                       param_offload=False, optimizer_offload=False, activation_offload=False)
    gc_act = sum(v for k, v in with_gc.components.items() if k.startswith("activations"))
    assert without.components["activations (all layers)"] > 5 * gc_act
    logits = with_gc.components["logits (fp32) and two fp32 gradient buffers"]
    assert logits == pytest.approx(12 * 4 * 4096 * shape.vocab_size)


def test_rollout_engine_is_a_separate_phase():
    shape = KNOWN_SHAPES["Qwen/Qwen3-4B"]
    geo = Geometry(2, 4, 1024, rollout_mem_fraction=0.6, gpu_memory_gb=80)
    est = estimate(shape, geo, param_offload=True, optimizer_offload=True, activation_offload=True)
    assert est.rollout_bytes == pytest.approx(48 * GB)
    # all state offloaded: nothing of training stays on the GPU while the engine generates
    assert est.rollout_phase == pytest.approx(48 * GB + est.overhead)
    assert est.peak == pytest.approx(max(est.training_peak, 48 * GB) + est.overhead)


def test_rollout_phase_adds_the_engine_to_resident_state_contexts_and_nccl():
    """SGLang's fraction is of the GPU, on top of what training keeps: non-offloaded parameters
    and optimizer state (gradients are freed), the CUDA contexts of both processes, NCCL's
    buffers; and the whole training peak when the allocator cache is not emptied."""
    shape = KNOWN_SHAPES["Qwen/Qwen3-0.6B"]
    geo = Geometry(2, 4, 4096, rollout_mem_fraction=0.5, gpu_memory_gb=80)
    est = estimate(shape, geo, param_offload=False, optimizer_offload=False, activation_offload=False)
    assert set(est.outside_allocator) == {"CUDA context (training rank)", "CUDA context (SGLang engine process)",
                                          "NCCL buffers"}
    resident = est.components["parameters"] + est.components["optimizer state"]
    assert est.rollout_phase == pytest.approx(resident + 40 * GB + est.overhead)
    kept = estimate(shape, Geometry(2, 4, 4096, rollout_mem_fraction=0.5, gpu_memory_gb=80,
                                    training_cache_emptied=False),
                    param_offload=False, optimizer_offload=False, activation_offload=False)
    assert kept.rollout_phase == pytest.approx(est.training_peak + 40 * GB + est.overhead)
    one_gpu_no_engine = estimate(shape, Geometry(1, 4, 4096), param_offload=False, optimizer_offload=False,
                                 activation_offload=False)
    assert set(one_gpu_no_engine.outside_allocator) == {"CUDA context (training rank)"}
    on_cpu = estimate(shape, Geometry(1, 4, 4096, on_gpu=False), param_offload=False, optimizer_offload=False,
                      activation_offload=False)
    assert on_cpu.outside_allocator == {}


@pytest.mark.parametrize("recipe", ["recipes/intention_4b.yaml", "recipes/intention_0.6b_dual_gpu.yaml"])
def test_gpu_recipes_fit_as_configured_and_the_table_says_so(recipe, monkeypatch):
    monkeypatch.delenv("USERRL_MODEL_PATH", raising=False)
    config = load_recipe(recipe)
    shape, geo, estimates = estimate_for_config(config)
    assert geo.num_gpus == 2 and geo.compute_bytes == 2
    configured = estimates[0]
    assert configured.label == "as configured"
    assert configured.peak < geo.gpu_memory_gb * GB
    text = format_estimate(shape, geo, estimates)
    assert "optimizer state" in text and "rollout engine" in text and "no offload" in text


def test_4b_without_offloads_does_not_fit_in_80_gb(monkeypatch):
    monkeypatch.delenv("USERRL_MODEL_PATH", raising=False)
    shape, geo, estimates = estimate_for_config(load_recipe("recipes/intention_4b.yaml"))
    no_offload = next(e for e in estimates if e.label == "no offload")
    assert no_offload.peak > 80 * GB
    assert "does not fit in 80 GiB: no offload" in format_estimate(shape, geo, estimates)


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_smoke_h200.json"
TOLERANCE = 0.15  # |measured / estimate - 1|, as docs/scaling.md states

RUN = json.loads(RESULTS.read_text())
PHASES = [p for p in RUN["phases"] if p.get("status") == "ok" and "max_memory_allocated_gib" in p.get("memory", {})]


PHASE_KIND = {"fsdp": (True, False), "fsdp_offload": (True, True), "transformers": (False, False)}
"""benchmarks/gpu_smoke.py's phase -> (sharded, offload)."""


def test_every_phase_of_the_h200_run_is_checked():
    assert {(p["shape"], p["phase"]) for p in PHASES} == {
        (s, ph) for s in ("qwen3-0.6b", "qwen3-4b") for ph in ("fsdp", "fsdp_offload", "transformers")}


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: f"{p['shape']}-{p['phase']}")
def test_estimate_within_tolerance_of_measured_peak(phase):
    name = phase["shape"]
    config = json.loads((ROOT / "benchmarks" / "model_shapes" / f"{name}.json").read_text())
    shape = shape_from_config(config, name=name, source="benchmarks/model_shapes")
    assert shape.num_params == phase["parameters"]  # the shape file is the model that was measured
    settings = RUN["settings"]
    sharded, offload = PHASE_KIND[phase["phase"]]
    estimated = phase_estimate_bytes(shape, sharded=sharded, offload=offload, micro_batch=settings["micro"],
                                     seq_len=settings["seq"]) / GB
    measured = phase["memory"]["max_memory_allocated_gib"]
    assert abs(measured / estimated - 1) <= TOLERANCE, f"{name} {phase['phase']}: measured {measured} GiB, estimated {estimated:.2f} GiB"
