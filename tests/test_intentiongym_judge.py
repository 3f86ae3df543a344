"""Parsing the judge's verdict out of hand-made model replies, in both judge formats.

The ``userrl`` cases follow UserRL's ``parse_evaluation_response``
(gyms/IntentionGym/intentiongym/env/prompts.py) and the index handling of its ``step``
(gyms/IntentionGym/intentiongym/env/intention_env.py): 0-based ``covered_detail_indices``,
``is_task_related: false`` clears them, a missing ``is_task_related`` counts as true, indices
outside the list are ignored, a repeated index counts again. Where UserRL silently reads an
unusable reply as "covers nothing", this parser raises (the environment re-asks, then fails).
"""

import pytest

from userrl_plugins.intentiongym.judge import JudgeReplyError, parse_judge_reply

LABELS_0 = {0, 1, 2}  # three details listed from 0 (userrl)
LABELS_1 = {1, 2, 3}  # the same, numbered from 1 (numbered)


@pytest.mark.parametrize(
    "text, covered, out_of_range, duplicates, related",
    [
        ('{"analysis": "asks about the budget", "is_task_related": true, "covered_detail_indices": [0, 2]}',
         [0, 2], 0, 0, True),
        ('{"analysis": "x", "covered_detail_indices": [1]}', [1], 0, 0, True),  # no is_task_related: related
        ('{"analysis": "off topic", "is_task_related": false, "covered_detail_indices": [0, 1]}',
         [], 0, 0, False),  # unrelated forces no coverage
        ('{"is_task_related": true, "covered_detail_indices": [1, 1, 2]}', [1, 1, 2], 0, 1, True),  # repeat counts
        ('{"is_task_related": true, "covered_detail_indices": [-1, 0, 3, 99]}', [0], 3, 0, True),  # out of range
        ('{"is_task_related": true, "covered_detail_indices": [5, 5, 0]}', [0], 2, 0, True),  # repeats of a bad index
        ('{"is_task_related": true, "covered_detail_indices": ["2", 0.0]}', [2, 0], 0, 0, True),  # text / whole float
        ('{"is_task_related": true, "covered_detail_indices": []}', [], 0, 0, True),
        ('{"is_task_related": true, "covered_detail_indices": null}', [], 0, 0, True),
        ('```json\n{"is_task_related": true, "covered_detail_indices": [2]}\n```', [2], 0, 0, True),
        ('Sure. It asks about the type.\n{"analysis": "type", "is_task_related": true, '
         '"covered_detail_indices": [0]}\nDone.', [0], 0, 0, True),
        ('<think>maybe {2}?</think> {"is_task_related": true, "covered_detail_indices": [2]}', [2], 0, 0, True),
        # The first object holding the list key wins (a stray object before it is skipped).
        ('{"note": 1} {"is_task_related": true, "covered_detail_indices": [1]}', [1], 0, 0, True),
    ],
)
def test_userrl_format(text, covered, out_of_range, duplicates, related):
    verdict = parse_judge_reply(text, LABELS_0)
    assert verdict.covered == covered
    assert verdict.out_of_range == out_of_range
    assert verdict.duplicates == duplicates
    assert verdict.task_related is related


def test_duplicates_ignored_on_request_but_still_counted():
    text = '{"is_task_related": true, "covered_detail_indices": [1, 1, 2, 1]}'
    counted = parse_judge_reply(text, LABELS_0, duplicates="count")
    ignored = parse_judge_reply(text, LABELS_0, duplicates="ignore")
    assert counted.covered == [1, 1, 2, 1] and counted.duplicates == 2
    assert ignored.covered == [1, 2] and ignored.duplicates == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no JSON object"),
        ("The question covers detail 2.", "no JSON object"),
        ('{"covered": [1]}', 'no JSON object with a "covered_detail_indices"'),  # the other format
        ('{"is_task_related": true, "covered_detail_indices": [1, 2', "no JSON object"),  # truncated
        ('{"is_task_related": true, "covered_detail_indices": "1, 2"}', "must be a list"),
        ('{"is_task_related": "false", "covered_detail_indices": [1]}', "must be true or false"),  # UserRL: related
        ('{"is_task_related": 0, "covered_detail_indices": [1]}', "must be true or false"),
        ('{"is_task_related": true, "covered_detail_indices": [true]}', "boolean"),
        ('{"is_task_related": true, "covered_detail_indices": ["budget"]}', "not a detail index"),
        ('{"is_task_related": true, "covered_detail_indices": [1.5]}', "not a detail index"),
        ('{"is_task_related": true, "covered_detail_indices": ["\u00b2"]}', "not a detail index"),  # a Unicode digit
        ('{"is_task_related": true, "covered_detail_indices": [[1]]}', "not a detail index"),
        # Checked even when unrelated: a malformed verdict is re-asked, not half-believed.
        ('{"is_task_related": false, "covered_detail_indices": ["x"]}', "not a detail index"),
    ],
)
def test_userrl_format_rejects_unusable_replies(text, message):
    with pytest.raises(JudgeReplyError, match=message):
        parse_judge_reply(text, LABELS_0)


@pytest.mark.parametrize(
    "text, covered, out_of_range",
    [
        ('{"covered": [1, 3]}', [1, 3], 0),
        ('{"covered": []}', [], 0),
        ('```\n{"covered": [2]}\n```', [2], 0),  # bare fence
        ('{"analysis": "x", "covered": ["2", 3.0]}', [2, 3], 0),
        ('{"covered": [1, 1, 2]}', [1, 2], 0),  # duplicates="ignore": counted once
        ('{"covered": [0, 1, 4, 99]}', [1], 3),  # 0 is out of range when numbering starts at 1
        ('{"note": {"covered": "nested is ignored"}} {"covered": [3]}', [3], 0),
        ('{"covered": [2], "is_task_related": false}', [2], 0),  # no such field in this format
    ],
)
def test_numbered_format(text, covered, out_of_range):
    verdict = parse_judge_reply(text, LABELS_1, judge_format="numbered", duplicates="ignore")
    assert verdict.covered == covered
    assert verdict.out_of_range == out_of_range


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"covered_detail_indices": [0]}', 'no JSON object with a "covered"'),
        ("[1, 2]", "no JSON object"),  # a bare list is not the protocol
        ('{"covered": "1, 2"}', "must be a list"),
        ('{"covered": [true]}', "boolean"),
    ],
)
def test_numbered_format_rejects_unusable_replies(text, message):
    with pytest.raises(JudgeReplyError, match=message):
        parse_judge_reply(text, LABELS_1, judge_format="numbered")


@pytest.mark.parametrize("judge_format, key", [("userrl", "covered_detail_indices"), ("numbered", "covered")])
@pytest.mark.parametrize("body", [
    "[" * 5000 + "]" * 5000,   # raised RecursionError before the bounded parser
    "[" + "9" * 5000 + "]",    # ValueError: an integer over 4,300 digits
    '["' + "9" * 5000 + '"]',  # ValueError from int() of the text
])
def test_hostile_replies_raise_only_judge_reply_error(judge_format, key, body):
    text = '{"is_task_related": true, "%s": %s}' % (key, body)
    with pytest.raises(JudgeReplyError) as info:
        parse_judge_reply(text, {0, 1, 2}, judge_format=judge_format)
    assert len(str(info.value)) < 400


def test_a_flood_of_braces_raises_only_judge_reply_error():
    with pytest.raises(JudgeReplyError):
        parse_judge_reply("{" * 100_000, LABELS_0)
