"""The task-dataset loader on the shipped UserRL parquet splits, mixed and broken files, and
plain JSON task lists."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from userrl_core.data import load_tasks
from userrl_core.errors import DataError
from userrl_core.plugins import PluginManager
from userrl_plugins.intentiongym import plugin as intentiongym_plugin
from userrl_plugins.intentiongym.tasks import DATA_DIR

SPLITS = DATA_DIR / "userrl_splits"


@pytest.fixture(scope="module")
def registry():
    manager = PluginManager()
    info = manager.add_plugin(intentiongym_plugin)
    assert info.status == "ok", info.error
    return manager.registry


def shipped_rows(n: int | None = None) -> list[dict]:
    rows = pq.read_table(SPLITS / "train.parquet").to_pylist()
    return rows[:n] if n else rows


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def with_env(row: dict, env_name: str) -> dict:
    row = copy.deepcopy(row)
    row["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]["env_name"] = env_name
    row["reward_model"]["env_name"] = env_name
    return row


# ------------------------------------------------------------------------------ shipped data


@pytest.mark.parametrize("name, count", [("train.parquet", 380), ("test.parquet", 40)])
def test_userrl_splits_load_unchanged(registry, name, count):
    tasks = load_tasks(SPLITS / name, registry)
    assert len(tasks) == count and tasks.skipped == []
    assert tasks.counts() == {"IntentionGym": count}
    first = tasks.tasks[0]
    assert first.data_source == "interact_intention"
    assert [m["role"] for m in first.prompt] == ["system", "user"]
    assert set(first.payload) == {"env_name", "id", "task", "category"}
    assert first.payload["task"] in first.prompt[1]["content"]
    assert first.source == f"{SPLITS / name} row 0"
    assert len({t.id for t in tasks.tasks}) == count
    assert f"loaded {count} task(s) from {name} (IntentionGym: {count})" == tasks.report()


def test_shipped_task_bank_sizes():
    assert len(json.loads((DATA_DIR / "all_intentions_train.json").read_text())) == 1012
    assert len(json.loads((DATA_DIR / "all_intentions_test.json").read_text())) == 95
    assert "Apache" in (DATA_DIR / "NOTICE.md").read_text()


def test_several_files_and_max_tasks(registry):
    both = load_tasks([SPLITS / "train.parquet", SPLITS / "test.parquet"], registry)
    assert len(both) == 420
    assert len(load_tasks([SPLITS / "train.parquet"], registry, max_tasks=5)) == 5
    assert len(load_tasks([str(SPLITS / "test.parquet")], registry, max_tasks=100)) == 40


# ------------------------------------------------------------------------------ environments


def test_mixed_file_loads_installed_env_and_reports_the_other(registry, tmp_path, caplog):
    rows = shipped_rows(6)
    mixed = rows[:4] + [with_env(r, "TravelGym") for r in rows[4:]] + [with_env(rows[0], "TravelGym")]
    path = write_parquet(tmp_path / "mixed.parquet", mixed)
    with caplog.at_level(logging.WARNING, logger="userrl_core.data"):
        tasks = load_tasks(path, registry)
    assert len(tasks) == 4 and {t.env_name for t in tasks.tasks} == {"IntentionGym"}
    assert len(tasks.skipped) == 1
    skipped = tasks.skipped[0]
    assert (skipped.env_name, skipped.count, skipped.file) == ("TravelGym", 3, str(path))
    assert skipped.installed == ["IntentionGym"]
    report = tasks.report()
    assert "skipped 3 row(s) with env_name 'TravelGym'" in report
    assert "installed environments: IntentionGym" in report
    assert any("TravelGym" in r.getMessage() for r in caplog.records)


def test_only_unknown_env_rows_is_an_error(registry, tmp_path):
    path = write_parquet(tmp_path / "travel.parquet", [with_env(r, "TravelGym") for r in shipped_rows(2)])
    with pytest.raises(DataError, match=r"no loadable tasks.*'TravelGym'.*installed environments: .*IntentionGym"):
        load_tasks(path, registry)


# ------------------------------------------------------------------------------ broken rows


def test_parquet_row_without_id_names_file_row_and_field(registry, tmp_path):
    rows = shipped_rows(3)
    rows[2]["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]["id"] = None
    path = write_parquet(tmp_path / "broken.parquet", rows)
    with pytest.raises(DataError) as info:
        load_tasks(path, registry)
    message = str(info.value)
    assert message.startswith(f"{path} row 2: extra_info.tools_kwargs.interact_with_env.create_kwargs.id: ")
    assert "string" in message


def test_parquet_row_with_unknown_task_id_is_caught_by_the_environment(registry, tmp_path):
    rows = shipped_rows(2)
    rows[1]["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]["id"] = "no-such-task"
    path = write_parquet(tmp_path / "unknown_id.parquet", rows)
    with pytest.raises(DataError, match=rf"{path} row 1: payload\.id: task id 'no-such-task' is not in"):
        load_tasks(path, registry)


def test_parquet_without_prompt_column(registry, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in shipped_rows(1)]
    path = write_parquet(tmp_path / "noprompt.parquet", rows)
    with pytest.raises(DataError, match=rf"{path} row 0: prompt: Field required"):
        load_tasks(path, registry)


def test_json_row_with_wrong_type(registry, tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"id": "a", "env_name": "IntentionGym", "task": "Plan a party.",
         "missing_details": [{"description": "Guests", "importance": 2}]},
        {"id": 17, "env_name": "IntentionGym", "task": "Plan a party."},
    ]))
    with pytest.raises(DataError, match=rf"{path} row 1: id: Input should be a valid string"):
        load_tasks(path, registry)


def test_json_row_with_bad_detail_names_the_payload_field(registry, tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"id": "a", "env_name": "IntentionGym", "task": "Plan a party.",
         "missing_details": [{"description": "Guests", "importance": "5"}]},
    ]))
    with pytest.raises(DataError, match=rf"{path} row 0: payload\.missing_details\.0\.importance: "):
        load_tasks(path, registry)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("tasks.json", '{"id": "a"}', "must hold a list"),
        ("tasks.json", "[{", "not valid JSON"),
        ("tasks.jsonl", '{"id": "ec6478cf-25a9-4cf1-b072-080bc37162dc", "env_name": "IntentionGym"}\nnot json\n',
         "line 2: not valid JSON"),
        ("tasks.json", '["just text"]', "row 0: a task must be a JSON object"),
        ("tasks.csv", "id,env_name\n", "unknown task file type '.csv'"),
        ("tasks.parquet", "not parquet", "not a readable parquet file"),
    ],
)
def test_unusable_files(registry, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_tasks(path, registry)


def test_missing_file(registry, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tasks(tmp_path / "nowhere.parquet", registry)


# ------------------------------------------------------------------------------ JSON task lists


def test_json_task_list(registry, tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"id": "party", "env_name": "IntentionGym", "task": "Plan a party.", "category": "Events",
         "missing_details": [{"description": "Guests", "importance": "2", "options": ["10", "50"]}]},
        {"id": "ec6478cf-25a9-4cf1-b072-080bc37162dc", "env_name": "IntentionGym",
         "data_source": "my_source", "prompt": [{"role": "user", "content": "Hi"}]},
        {"id": "t1", "env_name": "TravelGym"},
    ]))
    tasks = load_tasks(path, registry)
    assert [t.id for t in tasks.tasks] == ["party", "ec6478cf-25a9-4cf1-b072-080bc37162dc"]
    party, banked = tasks.tasks
    assert party.data_source == "IntentionGym" and party.prompt == []
    assert party.payload["missing_details"][0]["options"] == ["10", "50"]
    assert party.payload["task"] == "Plan a party." and party.payload["id"] == "party"
    assert banked.data_source == "my_source" and banked.prompt == [{"role": "user", "content": "Hi"}]
    assert "prompt" not in banked.payload and "data_source" not in banked.payload
    assert [(s.env_name, s.count) for s in tasks.skipped] == [("TravelGym", 1)]


def test_jsonl_task_list(registry, tmp_path):
    path = tmp_path / "tasks.jsonl"
    lines = [
        {"id": f"t{i}", "env_name": "IntentionGym", "task": f"Task {i}",
         "missing_details": [{"description": "Detail", "importance": 1}]}
        for i in range(3)
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    tasks = load_tasks(path, registry)
    assert [t.id for t in tasks.tasks] == ["t0", "t1", "t2"]
    assert tasks.tasks[2].source == f"{path} line 3"


def test_env_settings_reach_validation(registry, tmp_path):
    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps([{"id": "b1", "task": "Buy a laptop.",
                                 "missing_details": [{"description": "Budget", "importance": "3"}]}]))
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"id": "b1", "env_name": "IntentionGym"}]))
    with pytest.raises(DataError, match="payload.id"):
        load_tasks(path, registry)  # not in the shipped bank
    tasks = load_tasks(path, registry, env_settings={"IntentionGym": {"task_files": [str(bank)]}})
    assert [t.id for t in tasks.tasks] == ["b1"]


# ------------------------------------------------------------------------------ title-keyed rows


def test_title_keyed_rows_get_the_title_as_id_and_null_columns_are_dropped(registry, tmp_path):
    # UserRL's TelepathyGym/TurtleGym rows name their task by create_kwargs.title and carry no
    # id; in a mixed file the other gyms' columns (id, task, ...) are null in those rows.
    rows = shipped_rows(2)
    kwargs = rows[1]["extra_info"]["tools_kwargs"]["interact_with_env"]["create_kwargs"]
    kwargs.update(id=None, title="Kiwi")
    mixed = write_parquet(tmp_path / "mixed.parquet", rows)
    from userrl_core.data import _read_parquet, _task_from_verl

    first, second = (_task_from_verl(row, "row") for row in _read_parquet(mixed))
    assert second.id == "Kiwi" and "id" not in second.payload and second.payload["title"] == "Kiwi"
    assert "title" not in first.payload and first.id == rows[0]["extra_info"]["tools_kwargs"][
        "interact_with_env"]["create_kwargs"]["id"]
