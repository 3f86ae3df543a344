"""Checkpoint folders under ``<run_dir>/checkpoints``: atomic writes, rotation, the best kept apart.

Every checkpoint is written by a caller-supplied ``write_fn(tmp_dir)`` into a hidden temporary
folder next to its final place and then renamed, so a crash mid-write leaves no half
checkpoint (only a ``.tmp-*`` folder, removed on the next save). ``meta.json`` is written by
the manager last. Step checkpoints are ``step_000005``; only the last ``keep_last`` are kept.
``best`` holds the checkpoint with the highest validation reward and is never rotated.

Replacing an existing folder takes two renames (the old one into ``.old-<name>-*/``, the new
one into place). A crash between them leaves no ``<name>`` and the old copy aside; the manager
puts that copy back when it is created (on start-up and resume) and before every save, so a
later roll-back always has its target.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

META_FILE = "meta.json"
BEST = "best"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")

WriteFn = Callable[[Path], None]


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


class CheckpointManager:
    """Writes, lists and rotates the checkpoints of one run folder."""

    def __init__(self, run_dir: str | Path, keep_last: int | None = 2) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 (or None to keep all); got {keep_last}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.recover()

    def recover(self) -> list[Path]:
        """Finish swaps a crash interrupted: a folder whose old copy waits in ``.old-<name>-*``
        and that is missing itself is put back; old copies whose folder exists are removed.
        Returns the folders put back."""
        restored: list[Path] = []
        if not self.root.is_dir():
            return restored
        for holder in sorted(self.root.glob(".old-*")):
            for old in [p for p in holder.iterdir() if p.is_dir()] if holder.is_dir() else []:
                target = self.root / old.name
                if not target.exists() and (old / META_FILE).is_file():
                    os.replace(old, target)
                    restored.append(target)
            shutil.rmtree(holder, ignore_errors=True)
        return restored

    # ------------------------------------------------------------------ writing

    def save(self, step: int, write_fn: WriteFn, meta: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoints/step_<step>`` atomically, then drop step checkpoints beyond the last K."""
        target = self.root / step_dir_name(step)
        self._write_atomically(target, write_fn, {"step": step, **(meta or {})})
        self._rotate()
        return target

    def save_best(self, step: int, score: float, write_fn: WriteFn, meta: dict[str, Any] | None = None) -> Path:
        """Replace ``checkpoints/best`` with this step's weights; ``meta.json`` records step and score."""
        target = self.root / BEST
        self._write_atomically(target, write_fn, {**(meta or {}), "step": step, "val_score": float(score)})
        return target

    def _write_atomically(self, target: Path, write_fn: WriteFn, meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=self.root))
        try:
            write_fn(tmp)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            if target.exists():
                # rename the old folder away first: os.replace cannot replace a non-empty folder
                old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=self.root))
                os.replace(target, old / target.name)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        self.recover()
        for path in self.root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)

    def _rotate(self) -> None:
        if self.keep_last is None:
            return
        steps = self.steps()
        for step in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(self.root / step_dir_name(step), ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def steps(self) -> list[int]:
        """Steps of the complete step checkpoints, ascending."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / META_FILE).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete step checkpoint, or None."""
        steps = self.steps()
        return self.root / step_dir_name(steps[-1]) if steps else None

    def best(self) -> Path | None:
        path = self.root / BEST
        return path if (path / META_FILE).is_file() else None

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        return json.loads((Path(path) / META_FILE).read_text())
