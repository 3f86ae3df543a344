"""The cached-piece encoder against real `tokenizers` pipelines: SmolLM2's own (ByteLevel with
GPT-2's expression), and the same vocabulary behind Qwen2's and Llama 3's pre-tokenizers (a
`Split` on their expressions, as their tokenizer.json files declare, then ByteLevel without its
own expression; Qwen2 also declares an NFC normalizer)."""

from __future__ import annotations

import random

import pytest
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

from userrl_core.rollout.piece_encoder import PieceEncoder, ascii_expression, byte_level_alphabet

QWEN2_EXPRESSION = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                    r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_EXPRESSION = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                     r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_byte_level(backend, expression, normalizer=None):
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(expression), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tokenizer


@pytest.fixture(scope="module")
def pipelines(smol_tokenizer):
    backend = smol_tokenizer.backend_tokenizer
    return {
        "smollm2": backend,
        "qwen2": _split_then_byte_level(backend, QWEN2_EXPRESSION, normalizers.NFC()),
        "llama3": _split_then_byte_level(backend, LLAMA3_EXPRESSION),
    }


def _random_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    characters = "abcXYZ0192 \t\n\r'!?.,;:-_()[]{}<>\"$%&*/\\|~`^@#=+"
    chunks = ["<|im_start|>", "<|im_end|>", "'s", "'LL", "don't", "   ", "\n\n", "12345", "hello", " World", "\r\n"]
    return ["".join(rng.choice(characters) if rng.random() < 0.7 else rng.choice(chunks)
                    for _ in range(rng.randint(0, 60))) for _ in range(count)]


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "llama3"])
def test_piece_encoding_equals_the_tokenizer_on_random_ascii(pipelines, name):
    tokenizer = pipelines[name]
    encoder = PieceEncoder.for_tokenizer(tokenizer)
    assert encoder is not None
    for text in _random_texts(seed=len(name), count=400):
        assert encoder.encode(text) == tokenizer.encode(text, add_special_tokens=False).ids, repr(text)


def test_text_outside_printable_ascii_is_left_to_the_tokenizer(pipelines):
    encoder = PieceEncoder.for_tokenizer(pipelines["smollm2"])
    for text in ["café", "a\x0cb", "bell\x07", "unit\x1fseparator"]:
        assert encoder.encode(text) is None
    assert encoder.encode("tab\tnewline\ncr\r") is not None


@pytest.mark.parametrize("change", ["prefix_space", "lowercase", "metaspace", "strip_added_token"])
def test_pipelines_it_does_not_know_get_no_encoder(pipelines, change):
    tokenizer = Tokenizer.from_str(pipelines["smollm2"].to_str())
    if change == "prefix_space":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif change == "lowercase":
        tokenizer.normalizer = normalizers.Lowercase()
    elif change == "metaspace":
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    else:
        from tokenizers import AddedToken

        tokenizer.add_special_tokens([AddedToken("<|glued|>", lstrip=True)])
    assert PieceEncoder.for_tokenizer(tokenizer) is None


@pytest.mark.parametrize(("expression", "expected"), [
    (r" ?\p{L}+", " ?[A-Za-z]+"),
    (r"[^\s\p{L}\p{N}]+", r"[^\sA-Za-z0-9]+"),
    (r"\p{Lo}|\p{N}{1,3}", r"(?!)|[0-9]{1,3}"),
    (r"[\p{Lu}\p{Lt}]+", "[A-Z]+"),
    (r"\p{Sc}", None),  # a category it has no ASCII table for
    (r"\P{L}", None),
    (r"[a-z&&[^aeiou]]", None),  # class set operations
])
def test_ascii_expression(expression, expected):
    assert ascii_expression(expression) == expected


def test_byte_level_alphabet_is_a_bijection_onto_printable_characters():
    table = byte_level_alphabet()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "llama3"])
def test_decoding_equals_the_tokenizer_on_random_ids_and_refuses_other_bytes(pipelines, name):
    """Random id sequences over the whole vocabulary (special tokens, ASCII tokens, tokens with
    other bytes, lone UTF-8 continuation bytes): the cached texts give exactly the tokenizer's
    decode whenever they answer, and answer for every all-ASCII sequence."""
    tokenizer = pipelines[name]
    encoder = PieceEncoder.for_tokenizer(tokenizer)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    rng = random.Random(7)
    ascii_ids = [i for i in range(size) if tokenizer.decode([i], skip_special_tokens=False).isascii()]
    answered = 0
    for count in range(600):
        pool = ascii_ids if count % 2 else range(size)
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 30))]
        fast = encoder.decode(ids)
        slow = tokenizer.decode(ids, skip_special_tokens=False)
        if fast is not None:
            answered += 1
            assert fast == slow, ids
        elif count % 2:
            # every id of the ASCII pool decodes to ASCII alone; refused only if a token's
            # bytes are not all ASCII (a lone continuation byte decodes to U+FFFD, not ASCII)
            pytest.fail(f"an all-ASCII sequence was refused: {ids}")
    assert answered >= 300
    assert encoder.decode([-1]) is None and encoder.decode([size + 5]) is None
    assert encoder.decode(tokenizer.encode("café", add_special_tokens=False).ids) is None


def test_a_decoder_it_does_not_know_gets_no_encoder(pipelines):
    from tokenizers import decoders

    tokenizer = Tokenizer.from_str(pipelines["smollm2"].to_str())
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(content=" ", left=1)])
    assert PieceEncoder.for_tokenizer(tokenizer) is None
