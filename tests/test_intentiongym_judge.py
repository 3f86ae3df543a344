"""Parsing the judge's ``{"covered": [...]}`` verdict out of real-world model replies."""

import pytest

from userrl_plugins.intentiongym.judge import JudgeReplyError, parse_judge_reply

SHOWN = {1, 2, 3}


@pytest.mark.parametrize(
    "text, covered, out_of_range",
    [
        ('{"covered": [1, 3]}', [1, 3], 0),
        ('{"covered": []}', [], 0),
        ('```json\n{"covered": [2]}\n```', [2], 0),  # code fence
        ('```\n{"covered": [2]}\n```', [2], 0),  # bare fence
        ('Sure. The question asks about the budget.\n{"covered": [1]}\nHope that helps!', [1], 0),
        ('<think>maybe {2}?</think> {"covered": [2]}', [2], 0),  # a non-JSON brace first
        ('{"analysis": "x", "covered": ["2", 3.0]}', [2, 3], 0),  # numbers as text / whole floats
        ('{"covered": [1, 1, 2]}', [1, 2], 0),  # duplicates count once
        ('{"covered": [0, 1, 4, 99]}', [1], 3),  # out of range: dropped and counted
        ('{"note": {"covered": "nested is ignored"}} {"covered": [3]}', [3], 0),
        ('{"covered": null}', [], 0),
    ],
)
def test_parses_verdicts(text, covered, out_of_range):
    verdict = parse_judge_reply(text, SHOWN)
    assert verdict.covered == covered
    assert verdict.out_of_range == out_of_range


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no JSON object"),
        ("The question covers detail 2.", "no JSON object"),
        ('{"covered": [1, 2', "no JSON object"),  # truncated
        ('{"covered_detail_indices": [0]}', "no JSON object"),  # another format
        ("[1, 2]", "no JSON object"),  # a bare list is not the protocol
        ('{"covered": "1, 2"}', "must be a list"),
        ('{"covered": [true]}', "boolean"),
        ('{"covered": ["budget"]}', "not a detail number"),
        ('{"covered": [1.5]}', "not a detail number"),
    ],
)
def test_rejects_unusable_replies(text, message):
    with pytest.raises(JudgeReplyError, match=message):
        parse_judge_reply(text, SHOWN)


@pytest.mark.parametrize("text", [
    '{"covered": ' + "[" * 5000 + "]" * 5000 + "}",   # raised RecursionError before
    '{"covered": [' + "9" * 5000 + "]}",               # raised ValueError (int over 4,300 digits)
    '{"covered": ["' + "9" * 5000 + '"]}',            # raised ValueError from int() of the text
    "{" * 100_000,
])
def test_hostile_replies_raise_only_judge_reply_error(text):
    with pytest.raises(JudgeReplyError) as info:
        parse_judge_reply(text, {1, 2})
    assert len(str(info.value)) < 400
