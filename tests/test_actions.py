"""The action parser: UserRL's interact_with_env tool call, plain-text mode, and adversarial
output (fuzzed with hypothesis) that must never raise."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userrl_core.rollout.actions import (
    CHOICES,
    INTERACT_WITH_ENV_TOOL,
    MAX_PARSE_CHARS,
    TOOL_NAME,
    error_message,
    parse_reply,
    reminder_message,
    strip_thinking,
)
from userrl_core.types import Action


def call(choice="action", content="Which city?", name=TOOL_NAME, **extra) -> str:
    body = {"name": name, "arguments": {"choice": choice, "content": content, **extra}}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"


@pytest.mark.parametrize("choice", CHOICES)
def test_each_choice_parses(choice):
    parsed = parse_reply(call(choice, "text"))
    assert parsed.kind == "action"
    assert parsed.action == Action(choice, "text")


def test_thinking_before_the_call_is_ignored_even_when_it_mentions_a_call():
    reply = "<think>maybe <tool_call>{bad json</tool_call>?</think>\n" + call("answer", "Paris")
    assert parse_reply(reply).action == Action("answer", "Paris")


def test_first_tool_call_wins():
    reply = call("action", "first") + call("finish", "second")
    assert parse_reply(reply).action == Action("action", "first")


def test_code_fence_and_whitespace_are_tolerated():
    body = json.dumps({"name": TOOL_NAME, "arguments": {"choice": "action", "content": "hi"}})
    reply = f"Sure.\n<tool_call>\n```json\n  {body}\n```\n</tool_call>"
    assert parse_reply(reply).action == Action("action", "hi")


def test_arguments_as_json_string_are_accepted():
    body = json.dumps({"name": TOOL_NAME, "arguments": json.dumps({"choice": "answer", "content": "42"})})
    assert parse_reply(f"<tool_call>{body}</tool_call>").action == Action("answer", "42")


def test_unterminated_call_with_valid_json_parses_and_broken_one_is_invalid():
    body = json.dumps({"name": TOOL_NAME, "arguments": {"choice": "action", "content": "x"}})
    assert parse_reply(f"<tool_call>{body}").action == Action("action", "x")
    parsed = parse_reply("<tool_call>{\"name\": ")
    assert parsed.kind == "invalid" and "unterminated" in parsed.error


def test_finish_may_omit_content_but_other_choices_may_not():
    body = json.dumps({"name": TOOL_NAME, "arguments": {"choice": "finish"}})
    assert parse_reply(f"<tool_call>{body}</tool_call>").action == Action("finish", "")
    body = json.dumps({"name": TOOL_NAME, "arguments": {"choice": "answer"}})
    assert parse_reply(f"<tool_call>{body}</tool_call>").kind == "invalid"


@pytest.mark.parametrize(
    "reply, fragment",
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        (call(name="search"), "unknown tool 'search'"),
        (call(choice="think"), "unknown choice 'think'"),
        (call(content=["a", "b"]), "'content' must be a string"),
        (call(content=None), "'content' must be a string"),
        ("<tool_call>[1, 2]</tool_call>", "JSON object"),
        ("<tool_call>{\"name\": \"interact_with_env\", \"arguments\": 3}</tool_call>", "'arguments' must be"),
        ("<tool_call>" + "[" * 50_000 + "</tool_call>", "not valid JSON"),
    ],
)
def test_unusable_calls_are_invalid_with_a_reason(reply, fragment):
    parsed = parse_reply(reply)
    assert parsed.kind == "invalid"
    assert parsed.action is None
    assert fragment in parsed.error


def test_megabytes_of_text_are_rejected_unparsed_and_fast():
    reply = call() + "A" * (4 * 1024 * 1024)
    clock = time.perf_counter()
    parsed = parse_reply(reply)
    assert time.perf_counter() - clock < 0.1
    assert parsed.kind == "invalid"
    assert str(MAX_PARSE_CHARS) in parsed.error


def test_many_unclosed_think_tags_stay_linear():
    reply = "<think>" * (MAX_PARSE_CHARS // 8)
    clock = time.perf_counter()
    assert parse_reply(reply).kind == "no_action"
    assert time.perf_counter() - clock < 0.5


def test_no_tool_call_is_no_action():
    parsed = parse_reply("I think you want a trip to Paris.")
    assert parsed.kind == "no_action" and parsed.action is None


def test_tool_call_only_inside_thinking_is_no_action():
    assert parse_reply("<think>" + call() + "</think> Let me ask you.").kind == "no_action"


@pytest.mark.parametrize(
    "text, visible",
    [
        ("<think>a</think>b", "b"),
        ("x<think>a</think>y<think>c</think>z", "xyz"),
        ("reasoning opened by the template</think>answer", "answer"),
        ("answer<think>never closed", "answer"),
        ("no thinking", "no thinking"),
    ],
)
def test_strip_thinking(text, visible):
    assert strip_thinking(text) == visible


def test_plain_text_mode_uses_the_visible_reply():
    parsed = parse_reply("<think>plan</think>  What is your budget?  ", action_format="plain_text")
    assert parsed.action == Action("action", "What is your budget?")
    assert parse_reply("<think>only thinking</think>  ", action_format="plain_text").kind == "no_action"
    assert parse_reply("x" * (MAX_PARSE_CHARS + 1), action_format="plain_text").kind == "invalid"


@pytest.mark.parametrize(
    "reply, action",
    [
        ("[answer] 42", Action("answer", "42")),
        ("  [Search]  test ", Action("search", "test")),
        ("[finish]", Action("finish", "")),
        ("[action] 1 2 3 4", Action("action", "1 2 3 4")),
        ("[answer]", Action("answer", "")),
        ("The [answer] is 42", Action("action", "The [answer] is 42")),  # the tag must open the reply
        ("[guess] 42", Action("action", "[guess] 42")),
    ],
)
def test_plain_text_bracket_tags_choose(reply, action):
    assert parse_reply(reply, action_format="plain_text").action == action


def test_a_tool_call_content_loses_only_its_own_choice_tag():
    # UserRL's interact tool prefixes a content with its choice's tag unless it already has it
    # (verl/tools/interact_tool.py); the environment then strips that one tag.
    assert parse_reply(call("answer", "[answer] 42")).action == Action("answer", "42")
    assert parse_reply(call("search", "[search] test")).action == Action("search", "test")
    assert parse_reply(call("action", "[answer] 42")).action == Action("action", "[answer] 42")


def test_messages_back_to_the_model_name_the_tool_and_the_problem():
    parsed = parse_reply(call(choice="think"))
    message = error_message(parsed)
    assert "unknown choice 'think'" in message and TOOL_NAME in message
    assert TOOL_NAME in reminder_message("tool_call")
    assert all(f'"{choice}"' in message for choice in CHOICES)
    assert "<tool_call>" not in reminder_message("plain_text")


def test_tool_schema_is_userrls_interact_with_env():
    function = INTERACT_WITH_ENV_TOOL["function"]
    assert function["name"] == TOOL_NAME
    assert function["parameters"]["properties"]["choice"]["enum"] == list(CHOICES)
    assert function["parameters"]["required"] == ["choice", "content"]


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever the model emits, the parser answers with one of three verdicts.
# ---------------------------------------------------------------------------------------------

_fragments = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<think>", "</think>", "```", "```json\n", "{", "}", "[", "]", "\"", ":",
     ",", "\\", "name", "arguments", TOOL_NAME, "choice", "content", "action", "answer", "finish", "null",
     "\n", " ", "\x00", "\ud7ff", "é", "1e999999"]
)
_replies = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(_fragments, st.text(max_size=10)), max_size=60).map("".join),
)


def _check_verdict(parsed, plain: bool, reply: str = "") -> None:
    assert parsed.kind in ("action", "invalid", "no_action")
    if parsed.kind == "action":
        assert parsed.action is not None and parsed.action.choice in CHOICES
        assert isinstance(parsed.action.content, str)
        if plain:  # untagged plain replies are never empty; a bare tag ("[finish]") may be
            content = parsed.action.content
            assert content == content.strip() and (content or parsed.action.choice != "action" or "[" in reply)
    else:
        assert parsed.action is None and parsed.error


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=_replies, plain=st.booleans())
def test_fuzz_parser_never_raises(reply, plain):
    _check_verdict(parse_reply(reply, action_format="plain_text" if plain else "tool_call"), plain, reply)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.just(TOOL_NAME), _json_values), choice=st.one_of(st.sampled_from(CHOICES), _json_values),
       content=_json_values, noise=st.text(max_size=30))
def test_fuzz_structured_calls(name, choice, content, noise):
    body = json.dumps({"name": name, "arguments": {"choice": choice, "content": content}})
    parsed = parse_reply(f"{noise.replace('<', '')}<tool_call>{body}</tool_call>")
    _check_verdict(parsed, plain=False)
    valid = name == TOOL_NAME and choice in CHOICES and isinstance(content, str)
    assert (parsed.kind == "action") == valid
    if valid:
        assert parsed.action == Action(choice, content)
