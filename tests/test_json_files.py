"""The one JSON data-file reader the gyms share (userrl_plugins.json_files): every failure is one
error naming the file, or the file, the entry and the field."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from userrl_plugins.json_files import read_json, validated
from userrl_plugins.searchgym.tasks import QuestionBankError, load_bank
from userrl_plugins.turtlegym.stories import StoryFileError, load_stories


class Row(BaseModel):
    id: str = Field(min_length=1)


def test_read_json_names_the_file_and_what_it_must_hold(tmp_path):
    bad, wrong = tmp_path / "bad.json", tmp_path / "wrong.json"
    bad.write_text("[{", encoding="utf-8")
    wrong.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^Rows file .*bad.json is not readable JSON: "):
        read_json(str(bad), list, f"Rows file {bad} must hold a JSON list", ValueError)
    with pytest.raises(ValueError, match=r"^Rows file .*wrong.json must hold a JSON list$"):
        read_json(str(wrong), list, f"Rows file {wrong} must hold a JSON list", ValueError)
    with pytest.raises(ValueError, match=r"missing.json is not readable JSON"):
        read_json(str(tmp_path / "missing.json"), list, "Rows file missing.json must hold a JSON list", ValueError)
    assert validated(Row, {"id": "a"}, "x", ValueError).id == "a"
    with pytest.raises(ValueError, match=r"^rows.json entry 3: id: String should have at least 1 character$"):
        validated(Row, {"id": ""}, "rows.json entry 3", ValueError)


def test_the_gyms_keep_their_own_error_types_and_fields(tmp_path):
    questions, stories = tmp_path / "q.json", tmp_path / "s.json"
    questions.write_text('[{"id": "q1", "question": "?"}]', encoding="utf-8")
    stories.write_text("[]", encoding="utf-8")
    with pytest.raises(QuestionBankError, match=r"q.json entry 0: answer: Field required") as caught:
        load_bank(str(questions))
    assert caught.value.field == "questions_file"
    with pytest.raises(StoryFileError, match=r"must hold a JSON object of stories by id") as caught:
        load_stories(str(stories))
    assert caught.value.field == "story_file"
