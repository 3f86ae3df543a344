"""CheckpointManager: atomic step checkpoints, rotation, the best kept apart."""

from __future__ import annotations

import json

import pytest

from userrl_core.training.checkpoint import CheckpointManager


def writer(text):
    def write(tmp):
        (tmp / "hf").mkdir()
        (tmp / "hf" / "weights.txt").write_text(text)
    return write


def test_save_writes_step_folder_with_meta(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = manager.save(5, writer("w5"), {"val_score": 0.25})
    assert path == tmp_path / "checkpoints" / "step_000005"
    assert (path / "hf" / "weights.txt").read_text() == "w5"
    assert json.loads((path / "meta.json").read_text()) == {"step": 5, "val_score": 0.25}
    assert manager.latest() == path


def test_rotation_keeps_the_last_k_and_never_the_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save_best(1, 0.9, writer("best1"))
    for step in (1, 2, 3, 4):
        manager.save(step, writer(f"w{step}"))
    assert manager.steps() == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "step_000003", "step_000004"]
    assert manager.read_meta(manager.best()) == {"step": 1, "val_score": 0.9}
    assert (manager.best() / "hf" / "weights.txt").read_text() == "best1"


def test_save_best_replaces_the_previous_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save_best(2, 0.5, writer("old"))
    manager.save_best(6, 0.7, writer("new"))
    assert manager.read_meta(manager.best()) == {"step": 6, "val_score": 0.7}
    assert (manager.best() / "hf" / "weights.txt").read_text() == "new"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["best"]


def test_a_crash_mid_write_leaves_no_half_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(1, writer("w1"))
    manager.save_best(1, 0.4, writer("b1"))

    def crash(tmp):
        (tmp / "hf").mkdir()
        (tmp / "hf" / "part").write_text("half")
        raise KeyboardInterrupt  # even an interrupt leaves nothing behind

    with pytest.raises(KeyboardInterrupt):
        manager.save(2, crash)
    with pytest.raises(KeyboardInterrupt):
        manager.save_best(2, 0.9, crash)
    assert manager.steps() == [1]
    assert manager.latest().name == "step_000001"
    assert manager.read_meta(manager.best())["val_score"] == 0.4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "step_000001"]


def test_folders_without_meta_do_not_count(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None and manager.best() is None
    manager.save(3, writer("w3"))
    (tmp_path / "checkpoints" / "step_000009").mkdir()  # e.g. copied in by hand, incomplete
    assert manager.latest().name == "step_000003"


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
    manager = CheckpointManager(tmp_path, keep_last=None)
    for step in range(1, 5):
        manager.save(step, writer("w"))
    assert manager.steps() == [1, 2, 3, 4]


def test_a_crash_between_the_two_renames_of_best_is_recovered_on_start_up(tmp_path, monkeypatch):
    """Finding 8 of the reliability review: a crash after the old best was renamed away and
    before the new one was renamed in left no `best` and an `.old-best-*` nobody cleaned up."""
    import os

    from userrl_core.training import checkpoint

    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save_best(2, 0.5, writer("old best"))
    real_replace = os.replace
    calls = []

    def crash_on_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between the two renames
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        manager.save_best(6, 0.7, writer("new best"))
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    root = tmp_path / "checkpoints"
    assert not (root / "best").exists() and list(root.glob(".old-best-*"))

    restarted = CheckpointManager(tmp_path, keep_last=1)
    assert restarted.best() == root / "best"
    assert restarted.read_meta(restarted.best()) == {"step": 2, "val_score": 0.5}
    assert (restarted.best() / "hf" / "weights.txt").read_text() == "old best"
    assert not list(root.glob(".old-*"))
