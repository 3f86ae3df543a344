"""The bounded JSON finder every environment uses on simulator replies (finding 1 of the
reliability review): hostile replies (deep nesting, huge integers, megabytes of braces, stray
quotes) never raise, and the work done grows linearly with the reply."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userrl_core import bounded_json
from userrl_core.bounded_json import ReplyLimits, first_object_with, json_objects


def test_finds_objects_in_prose_and_prefers_fenced_blocks():
    text = 'Thinking {"covered": [9]} then\n```json\n{"covered": [3]}\n```\n'
    assert json_objects(text) == [{"covered": [3]}, {"covered": [9]}]
    assert first_object_with(text, "covered") == {"covered": [3]}
    assert first_object_with("no json here", "covered") is None


def test_nested_object_is_returned_once_as_part_of_its_parent():
    assert json_objects('{"a": {"covered": [1]}} {"b": 2}') == [{"a": {"covered": [1]}}, {"b": 2}]


def test_braces_inside_strings_and_stray_quotes_in_prose():
    assert json_objects('{"note": "a } b {\\" {", "covered": [5]}') == [{"note": 'a } b {" {', "covered": [5]}]
    assert json_objects('{ he said "hi } then {"covered": [4]}') == [{"covered": [4]}]


@pytest.mark.parametrize("hostile", [
    '{"covered": ' + "[" * 5000 + "]" * 5000 + "}",   # RecursionError in json.loads before
    '{"covered": [' + "9" * 5000 + "]}",               # ValueError: int over 4,300 digits before
    "{" * 100_000,
    '{"a":' * 30_000,
    '{"' * 50_000,
    "\x00\xff" * 10_000,
])
def test_hostile_replies_never_raise(hostile):
    assert json_objects(hostile) == []
    assert json_objects(hostile, ReplyLimits(max_chars=10**6, max_depth=10**5)) == []


def test_only_the_first_max_chars_are_read():
    text = " " * 100 + '{"covered": [1]}'
    assert json_objects(text, ReplyLimits(max_chars=50)) == []
    assert json_objects(text, ReplyLimits(max_chars=200)) == [{"covered": [1]}]


def test_depth_limit_skips_deep_objects_but_keeps_shallow_ones():
    deep = '{"x": ' * 40 + "1" + "}" * 40
    assert json_objects(deep + ' {"covered": [7]}') == [{"covered": [7]}]
    assert json_objects(deep, ReplyLimits(max_depth=64)) != []


def test_decoding_work_is_linear_in_the_reply(monkeypatch):
    """Characters handed to the JSON decoder stay within max_depth x the reply length, for
    the shapes that made the old scan quadratic (it decoded from every '{' to the end)."""
    decoded = []
    real = bounded_json._decode
    monkeypatch.setattr(bounded_json, "_decode", lambda piece: decoded.append(len(piece)) or real(piece))
    limits = ReplyLimits()
    for text in ['{"a": [' * 4000, '{"a":' * 6000 + "}" * 5999, "{}" * 16_000, '{"a": {"b": 1} ' * 2000]:
        decoded.clear()
        json_objects(text, limits)
        assert sum(decoded) <= limits.max_depth * min(len(text), limits.max_chars)


def test_matches_json_loads_on_well_formed_objects():
    for value in [{"covered": [1, 2]}, {"a": {"b": [1, {"c": "}"}]}}, {}, {"s": "\\\"{"}]:
        assert json_objects(json.dumps(value)) == [value]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=24,
)
# strings that make the scan and a decoder disagree if either is wrong: braces, quotes, escapes,
# fences, nested objects inside strings
_AWKWARD_STRINGS = st.sampled_from(['{', '}', '[', ']', '"', '\\', '```', '{"covered": [1]}', '```{"a": 1}```', ' '])


@settings(max_examples=400, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6) | _AWKWARD_STRINGS, _JSON_VALUES | _AWKWARD_STRINGS, max_size=5),
       padding=st.tuples(st.sampled_from(["", " ", "\n", " \t\n "]), st.sampled_from(["", " ", "\n\n"])),
       indent=st.sampled_from([None, 2]), max_depth=st.sampled_from([1, 2, 3, 32]))
def test_the_whole_reply_short_cut_returns_what_the_scan_returns(value, padding, indent, max_depth):
    """A reply that is one JSON object takes the short cut; whatever it holds (braces, quotes and
    fences in strings, deep nesting, a small depth limit), the result equals the scan's."""
    text = padding[0] + json.dumps(value, indent=indent) + padding[1]
    limits = ReplyLimits(max_depth=max_depth)
    scanned = bounded_json._json_objects_scanned(text, limits)
    assert json_objects(text, limits) == scanned


def test_a_whole_object_reply_is_decoded_once(monkeypatch):
    decoded = []
    real = bounded_json._decode
    monkeypatch.setattr(bounded_json, "_decode", lambda piece: decoded.append(piece) or real(piece))
    reply = ' {"analysis": "asks about {dates}", "is_task_related": true, "covered_detail_indices": [0, 2]}\n'
    assert json_objects(reply) == [json.loads(reply)]
    assert decoded == [reply.strip()]
