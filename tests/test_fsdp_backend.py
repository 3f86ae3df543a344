"""FSDP2 over 2 CPU ranks (gloo) against single-process training on the same batch.

The ranks are real spawned processes running the same code path as on GPUs (fully_shard per
decoder layer, sharded AdamW, DCP checkpoints); only the device and the collective backend
differ. One rank group is shared by the tests of this module (starting it costs most of the time).
"""

import json

import pytest
import torch
from safetensors import safe_open

from userrl_core.config.schema import RunConfig
from userrl_core.types import TrainBatch
from userrl_plugins.backends.fsdp_backend import FSDPTrainingBackend
from userrl_plugins.backends.rank_processes import LocalRankGroup, RankGroupError
from userrl_plugins.backends.torch_policy import TorchPolicy, load_causal_lm, load_tokenizer

ATOL = 2e-5


def make_config(model_dir, **actor):
    settings = {"backend": "fsdp", "lr": 1e-3, "ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2}
    settings.update(actor)
    return RunConfig.model_validate({
        "model": {"path": str(model_dir)},
        "data": {"train_files": ["unused.parquet"], "train_batch_size": 4},
        "rollout": {"n": 2},
        "actor": settings,
        "trainer": {"device": "cpu"},
        "ray": {"cpu_ranks": 2, "enabled": False},
    })


def make_batch(vocab, rows=8, seq=24, seed=0):
    """Right-padded episodes of different lengths, prompt tokens masked out, one advantage per
    episode, GRPO groups of 2. 7 rows (odd) leaves one rank a row short."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (rows,), generator=g)
    attention = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids = torch.randint(0, vocab, (rows, seq), generator=g) * attention
    loss_mask = attention.clone()
    loss_mask[:, :6] = 0
    advantages = (torch.randn(rows, 1, generator=g).expand(rows, seq) * loss_mask).contiguous()
    return TrainBatch(input_ids=ids, attention_mask=attention, loss_mask=loss_mask, advantages=advantages,
                      group_ids=torch.arange(rows) // 2)


def single_process(model_dir, config):
    model = load_causal_lm(model_dir, dtype="float32", device=torch.device("cpu"))
    return TorchPolicy(model=model, tokenizer=load_tokenizer(model_dir), actor=config.actor, rollout_n=2,
                       total_steps=None)


def max_diff(full, reference):
    return max((full[k] - reference[k]).abs().max().item() for k in full)


@pytest.fixture(scope="module")
def fsdp(tiny_model_dir):
    config = make_config(tiny_model_dir)
    group = LocalRankGroup(config, str(tiny_model_dir), world=2)
    backend = FSDPTrainingBackend(group, tokenizer=None)
    yield backend, config
    backend.close()
    assert all(not p.is_alive() for p in group.processes) and group.processes == []


def test_two_ranks_match_single_process_logprobs_update_and_weights(fsdp, tiny_model_dir):
    backend, config = fsdp
    single = single_process(tiny_model_dir, config)
    vocab = single.model.config.vocab_size
    for seed, rows in [(0, 8), (1, 7)]:  # 7 rows: the ranks hold 4 and 3 rows, still in step
        batch = make_batch(vocab, rows=rows, seed=seed)
        batch.old_logprobs = single.compute_logprobs(batch)
        sharded_logprobs = backend.compute_logprobs(batch)
        assert torch.allclose(sharded_logprobs, batch.old_logprobs, atol=1e-6)
        expected = single.update(batch)
        got = backend.update(batch)
        assert got["actor/optimizer_steps"] == expected["actor/optimizer_steps"] == 2.0
        for key in ["actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl", "actor/pg_clipfrac"]:
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
        full = backend.full_state_dict()
        reference = single.model.state_dict()
        assert "lm_head.weight" not in full  # tied to the embeddings: dropped from the export
        assert set(full) == set(reference) - {"lm_head.weight"}
        assert max_diff(full, reference) < ATOL
    assert got["perf/cpu_max_rss_gb"] > 0


def test_hf_export_loads_with_transformers_and_has_no_duplicate_head(fsdp, tmp_path):
    from transformers import AutoModelForCausalLM

    backend, _ = fsdp
    backend.save_hf(tmp_path / "hf")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    full = backend.full_state_dict()
    state = loaded.state_dict()
    assert max_diff(full, state) == 0.0
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (tmp_path / "hf" / "tokenizer_config.json").exists()


def test_dcp_save_and_resume_restore_weights_and_optimizer(fsdp, tiny_model_dir, tmp_path):
    backend, _ = fsdp
    vocab = len(load_tokenizer(tiny_model_dir))
    batch = make_batch(vocab, seed=7)
    batch.old_logprobs = backend.compute_logprobs(batch)
    backend.save_state(tmp_path / "ckpt")
    saved = backend.full_state_dict()
    assert any((tmp_path / "ckpt" / "fsdp_shards").glob("*.distcp"))
    first = backend.update(batch)
    after_first = backend.full_state_dict()
    assert max_diff(after_first, saved) > 1e-4  # the update moved the weights
    backend.load_state(tmp_path / "ckpt")
    assert max_diff(backend.full_state_dict(), saved) == 0.0
    second = backend.update(batch)  # same optimizer moments and lr: the same step again
    assert second["actor/pg_loss"] == pytest.approx(first["actor/pg_loss"], rel=1e-6)
    assert max_diff(backend.full_state_dict(), after_first) < 1e-6


def test_a_failing_rank_call_is_reported_and_stops_the_group(tiny_model_dir):
    group = LocalRankGroup(make_config(tiny_model_dir), str(tiny_model_dir), world=2)
    pids = group.pids
    with pytest.raises(RankGroupError, match=r"rank 0: AttributeError"):
        group.call_all("call", "no_such_method")
    import psutil

    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_process_group_has_gloo_beside_nccl_on_gpus():
    """Offloaded shards are CPU DTensors: their collectives need a CPU backend beside NCCL (as
    verl initialises it in verl/workers/fsdp_workers.py). Today's NCCL-only group fails there."""
    from userrl_plugins.backends.fsdp_backend import process_group_backend

    assert process_group_backend(on_gpu=True) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(on_gpu=False) == "gloo"


def test_param_offload_with_active_clipping_matches_single_process(tiny_model_dir):
    """CPUOffloadPolicy (param_offload) over 2 ranks, with a grad_clip small enough to clip every
    step: the global norm of the sharded gradients and the clipped update equal one process's.
    On a GPU the same path runs with CPU-resident shards under NCCL (benchmarks/gpu_smoke.py)."""
    config = make_config(tiny_model_dir, param_offload=True, grad_clip=1e-3)
    single = single_process(tiny_model_dir, config)
    group = LocalRankGroup(config, str(tiny_model_dir), world=2)
    backend = FSDPTrainingBackend(group, tokenizer=None)
    try:
        batch = make_batch(single.model.config.vocab_size, rows=7, seed=3)
        batch.old_logprobs = single.compute_logprobs(batch)
        expected = single.update(batch)
        got = backend.update(batch)
        assert expected["actor/grad_norm"] > 1e-2  # far above grad_clip: the clip is active
        assert got["actor/grad_norm"] == pytest.approx(expected["actor/grad_norm"], rel=1e-4)
        assert max_diff(backend.full_state_dict(), single.model.state_dict()) < ATOL
    finally:
        backend.close()
