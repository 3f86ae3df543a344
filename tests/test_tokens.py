"""Chat-template token bookkeeping with the real SmolLM2 tokenizer: prompts, continuations after
closed and cut-off turns, Qwen3-style re-rendering of history, and template probing."""

from __future__ import annotations

import pytest

from support.chat_templates import QWEN_STYLE_TEMPLATE
from userrl_core.errors import ConfigError
from userrl_core.rollout.actions import INTERACT_WITH_ENV_TOOL
from userrl_core.rollout.tokens import ChatTokens

OPENING = [{"role": "system", "content": "You ask clarifying questions."}, {"role": "user", "content": "Plan a trip."}]


@pytest.fixture(scope="module")
def chatml(smol_tokenizer):
    return ChatTokens(smol_tokenizer, tools=[INTERACT_WITH_ENV_TOOL])


@pytest.fixture(scope="module")
def qwen_style(smol_tokenizer):
    return ChatTokens(smol_tokenizer, tools=[INTERACT_WITH_ENV_TOOL], chat_template=QWEN_STYLE_TEMPLATE)


def test_probing_smollm2_template(chatml, smol_tokenizer):
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert chatml.end_of_turn_ids == [im_end]
    assert chatml.end_of_turn_text == "<|im_end|>"
    assert im_end in chatml.stop_token_ids
    assert chatml.tools is None  # SmolLM2's template ignores tools=, so none are passed
    assert chatml.supports_tool_role  # it renders any role name verbatim


def test_probing_qwen_style_template(qwen_style):
    assert qwen_style.tools == [INTERACT_WITH_ENV_TOOL]
    assert qwen_style.supports_tool_role
    prompt = qwen_style.decode(qwen_style.prompt_ids(OPENING))
    assert "<tools>" in prompt and '"name": "interact_with_env"' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_prompt_ids_decode_to_the_rendered_prompt(chatml):
    ids = chatml.prompt_ids(OPENING)
    assert chatml.decode(ids) == chatml.render(OPENING, add_generation_prompt=True)
    assert chatml.matches_rendering(ids, OPENING)


def test_continuation_after_a_closed_turn_equals_a_fresh_rendering(chatml):
    sampled = chatml.encode("Where to?") + chatml.end_of_turn_ids
    history = [*OPENING, {"role": "assistant", "content": "Where to?"}]
    reply = {"role": "tool", "content": "Somewhere warm."}
    held = chatml.prompt_ids(OPENING) + sampled + chatml.continuation_ids(history, [reply], turn_closed=True)
    assert chatml.decode(held) == chatml.render([*history, reply], add_generation_prompt=True)
    assert chatml.matches_rendering(held, [*history, reply])


def test_continuation_after_a_cut_off_turn_starts_with_the_end_of_turn(chatml):
    sampled = chatml.encode("Where to go in the")  # hit the length cap: no <|im_end|>
    history = [*OPENING, {"role": "assistant", "content": "Where to go in the"}]
    reply = {"role": "user", "content": "Go on."}
    appended = chatml.continuation_ids(history, [reply], turn_closed=False)
    assert appended[: len(chatml.end_of_turn_ids)] == chatml.end_of_turn_ids
    held = chatml.prompt_ids(OPENING) + sampled + appended
    assert chatml.decode(held) == chatml.render([*history, reply], add_generation_prompt=True)


def test_qwen_style_history_rerendering_never_touches_held_ids(qwen_style):
    """Qwen3 drops <think> from an assistant turn once a later user message exists. The held
    ids keep what was sampled; only the appended part comes from the template."""
    text = "<think>they want a trip</think>Where to?"
    prompt = qwen_style.prompt_ids(OPENING)
    sampled = qwen_style.encode(text) + qwen_style.end_of_turn_ids
    history = [*OPENING, {"role": "assistant", "content": text}]
    reminder = {"role": "user", "content": "Use the tool."}
    appended = qwen_style.continuation_ids(history, [reminder], turn_closed=True)
    assert qwen_style.decode(appended) == "\n<|im_start|>user\nUse the tool.<|im_end|>\n<|im_start|>assistant\n"
    held = prompt + sampled + appended
    assert "<think>they want a trip</think>" in qwen_style.decode(held)
    fresh = qwen_style.render([*history, reminder], add_generation_prompt=True)
    assert "<think>" not in fresh  # the template re-rendered history differently ...
    assert not qwen_style.matches_rendering(held, [*history, reminder])  # ... which is detected


def test_qwen_style_tool_reply_is_a_tool_response_in_a_user_turn(qwen_style):
    history = [*OPENING, {"role": "assistant", "content": "<tool_call>{}</tool_call>"}]
    appended = qwen_style.continuation_ids(history, [{"role": "tool", "content": "Rome."}], turn_closed=True)
    assert qwen_style.decode(appended) == (
        "\n<|im_start|>user\n<tool_response>\nRome.\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_non_canonical_sampled_ids_are_detected(chatml):
    """A policy may sample a non-canonical split of a word; decode is the same text but a fresh
    tokenisation differs. The ids are kept; the mismatch is reported."""
    split = [token for char in "Hello" for token in chatml.encode(char)]
    assert split != chatml.encode("Hello") and chatml.decode(split) == "Hello"
    history = [*OPENING, {"role": "assistant", "content": "Hello"}]
    reply = {"role": "user", "content": "Hi."}
    held = chatml.prompt_ids(OPENING) + split + chatml.end_of_turn_ids
    held += chatml.continuation_ids(history, [reply], turn_closed=True)
    assert chatml.decode(held) == chatml.render([*history, reply], add_generation_prompt=True)
    assert not chatml.matches_rendering(held, [*history, reply])


def test_template_without_a_special_end_of_turn_is_rejected(smol_tokenizer):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(ConfigError, match="special token"):
        ChatTokens(smol_tokenizer, chat_template=template)


def test_continuation_needs_an_assistant_turn_last(chatml):
    with pytest.raises(ValueError, match="assistant"):
        chatml.continuation_ids(OPENING, [{"role": "user", "content": "x"}], turn_closed=True)


@pytest.mark.parametrize("template", [None, QWEN_STYLE_TEMPLATE])
def test_fast_paths_give_exactly_what_the_tokenizer_gives(smol_tokenizer, template):
    """The compiled template, the Rust encode/decode, the piece encoder, the spliced
    continuation and the short continuation probe are used for SmolLM2, and over a five-turn
    conversation (ASCII and non-ASCII replies, user and tool roles) they equal
    apply_chat_template / encode / decode and the full-history probe."""
    fast = ChatTokens(smol_tokenizer, tools=[INTERACT_WITH_ENV_TOOL], chat_template=template)
    assert fast._compiled is not None and fast._backend is not None and fast._pieces is not None
    assert fast._splice_roles == {"user", "tool"}
    slow = ChatTokens(smol_tokenizer, tools=[INTERACT_WITH_ENV_TOOL], chat_template=template)
    slow._compiled, slow._backend, slow._short_probe = None, None, False
    slow._pieces, slow._splice_roles = None, frozenset()
    history = list(OPENING)
    for turn in range(5):
        history.append({"role": "assistant", "content": f"<think>hm {turn}</think>Question {turn}: dates & \"budget\"?"})
        content = f"Answer {turn}:\n  May {turn + 1}." if turn % 2 else f"Réponse {turn} — «mai»\t{turn}"
        new = [{"role": "tool" if turn == 3 else "user", "content": content}]
        assert fast.continuation_ids(history, new, turn_closed=True) == slow.continuation_ids(history, new, turn_closed=True)
        history.extend(new)
        assert fast.prompt_ids(history) == slow.prompt_ids(history)
        assert fast.render(history, add_generation_prompt=True) == slow.render(history, add_generation_prompt=True)
        ids = fast.prompt_ids(history)
        assert fast.decode(ids) == slow.decode(ids)
    assert fast._short_probe is True
    assert fast.prompt_ids(OPENING) is not fast.prompt_ids(OPENING)  # cached, but never shared


# Llama-3-style: every message's content is trimmed, so a reply cannot be spliced in verbatim
TRIMMING_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + (m.content | trim) + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# renders a user message verbatim unless it holds a word the awkward-content probes do not try
SELECTIVE_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
    "{% if 'CONFIDENTIAL' in m.content %}{{ '[hidden]' }}{% else %}{{ m.content }}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _conversation_ids(tokens, replies):
    """Held ids of a conversation whose assistant turns all close, replies appended by
    continuation_ids."""
    history, held = list(OPENING), tokens.prompt_ids(OPENING)
    for index, reply in enumerate(replies):
        question = f"Question {index}?"
        held += tokens.encode(question) + tokens.end_of_turn_ids
        history.append({"role": "assistant", "content": question})
        held += tokens.continuation_ids(history, [{"role": "user", "content": reply}], turn_closed=True)
        history.append({"role": "user", "content": reply})
    return held, history


def test_a_template_that_changes_content_is_rendered_not_spliced(smol_tokenizer):
    tokens = ChatTokens(smol_tokenizer, chat_template=TRIMMING_TEMPLATE)
    assert tokens._splice_roles == frozenset()
    held, history = _conversation_ids(tokens, ["  padded reply  ", "\nsecond\n"])
    assert tokens.matches_rendering(held, history)
    assert "padded reply<|im_end|>" in tokens.decode(held)


def test_a_splice_that_differs_from_the_rendering_is_caught_and_switched_off(smol_tokenizer, monkeypatch, caplog):
    """The awkward-content probes cannot foresee every template; the audit compares a splice
    with the rendering and stops splicing at the first difference."""
    monkeypatch.setattr("userrl_core.rollout.tokens.AUDIT_EVERY", 1)
    tokens = ChatTokens(smol_tokenizer, chat_template=SELECTIVE_TEMPLATE)
    assert "user" in tokens._splice_roles
    with caplog.at_level("WARNING", logger="userrl_core.rollout.tokens"):
        held, history = _conversation_ids(tokens, ["fine", "this is CONFIDENTIAL", "fine again"])
    assert tokens._splice_roles == frozenset()
    assert "did not render a user message's content verbatim" in caplog.text
    assert tokens.matches_rendering(held, history)  # the audited call returned the rendering
    assert "[hidden]" in tokens.decode(held)


def test_a_piece_encoding_that_differs_is_caught_and_switched_off(smol_tokenizer, monkeypatch, caplog):
    monkeypatch.setattr("userrl_core.rollout.tokens.AUDIT_EVERY", 1)
    tokens = ChatTokens(smol_tokenizer)
    expected = tokens._encode_slow("plain words")
    tokens._pieces._pieces[" words"] = [0]  # a corrupted cache entry stands for a wrong piece split
    with caplog.at_level("WARNING", logger="userrl_core.rollout.tokens"):
        assert tokens.encode("plain words") == expected
    assert tokens._pieces is None and "switched off" in caplog.text


def test_a_cached_decoding_that_differs_is_caught_and_switched_off(smol_tokenizer, monkeypatch, caplog):
    monkeypatch.setattr("userrl_core.rollout.tokens.AUDIT_EVERY", 1)
    tokens = ChatTokens(smol_tokenizer)
    ids = tokens._encode_slow("plain words")
    tokens._pieces._ascii[ids[-1]] = " wrong"  # a corrupted table entry stands for a wrong text
    with caplog.at_level("WARNING", logger="userrl_core.rollout.tokens"):
        assert tokens.decode(ids) == "plain words"
    assert not tokens._ascii_decode and "switched off" in caplog.text
    assert tokens.decode(ids) == "plain words"  # the tokenizer's own decode from now on
