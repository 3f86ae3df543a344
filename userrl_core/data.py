"""Task datasets: the verl/UserRL parquet layout as it is, and plain JSON task lists.

Users' existing UserRL parquet files load unchanged. Each row is routed to its environment
plugin by ``extra_info.tools_kwargs.interact_with_env.create_kwargs.env_name``:

- ``Task.prompt`` is the row's ``prompt`` messages, ``Task.payload`` the ``create_kwargs``
  (``env_name``, ``id``, ``task``, ``category`` ...; keys that are null in the row, as a mixed
  file's other gyms' columns are, left out), ``Task.data_source`` the row's ``data_source``
  (``interact_intention``), which names the validation metrics. ``Task.id`` is
  ``create_kwargs.id``, or its ``title`` for the gyms UserRL keys by title (TelepathyGym,
  TurtleGym).
- JSON (a list of objects) and JSONL (one object a line) task files hold ``id``, ``env_name``,
  optional ``data_source`` (defaults to ``env_name``) and ``prompt`` (a list of messages); every
  other key goes into ``payload``.

Rows are validated with pydantic, then by the environment itself when its factory has a
``validate_task(task)`` attribute. A bad row raises one :class:`DataError` naming the file, the
row and the dotted field. Rows whose environment is not installed are skipped and reported with
the list of installed environments, so a mixed UserRL file still trains the gyms at hand.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from userrl_core.errors import DataError, PluginConflictError, UnknownNameError, UserError
from userrl_core.registry import Kind, Registry
from userrl_core.types import Task

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Row shapes
# --------------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(min_length=1)
    content: str


class CreateKwargs(_Open):
    """The environment's creation arguments. UserRL names a task by ``id`` in most gyms and by
    ``title`` in TelepathyGym and TurtleGym; the task id is whichever the row has (``id`` first)."""

    env_name: str = Field(min_length=1)
    title: str | None = None
    id: str | None = Field(None, validate_default=True)

    @field_validator("id")
    @classmethod
    def _id_or_title(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and not info.data.get("title"):
            raise ValueError("a task needs a non-empty string id (or, as in UserRL's title-keyed gyms, a title)")
        if value is not None and not value:
            raise ValueError("the task id must be a non-empty string")
        return value

    @property
    def task_id(self) -> str:
        return self.id or str(self.title)


class InteractWithEnv(_Open):
    create_kwargs: CreateKwargs


class ToolsKwargs(_Open):
    interact_with_env: InteractWithEnv


class ExtraInfo(_Open):
    tools_kwargs: ToolsKwargs


class VerlRow(_Open):
    """A verl/UserRL parquet row (``ability``, ``reward_model`` ... are allowed and kept aside)."""

    data_source: str = Field(min_length=1)
    prompt: list[ChatMessage] = Field(min_length=1)
    extra_info: ExtraInfo


class JsonTaskRow(_Open):
    """A plain JSON task: everything beyond these keys is the environment's payload."""

    id: str = Field(min_length=1)
    env_name: str = Field(min_length=1)
    data_source: str | None = None
    prompt: list[ChatMessage] | None = None


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class SkippedRows:
    """Rows of one file whose environment cannot run here."""

    env_name: str
    count: int
    file: str
    installed: list[str]
    reason: str = "no installed environment plugin"

    def describe(self) -> str:
        installed = ", ".join(self.installed) or "none"
        return (
            f"{self.file}: skipped {self.count} row(s) with env_name {self.env_name!r}: {self.reason} "
            f"(installed environments: {installed})"
        )


@dataclass
class TaskSet:
    """The tasks that will run, and what was left out."""

    tasks: list[Task] = field(default_factory=list)
    skipped: list[SkippedRows] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for task in self.tasks:
            out[task.env_name] = out.get(task.env_name, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        """Tasks loaded per environment and rows skipped per environment (for summary.json and
        the report): ``{"loaded": {env: n}, "skipped": {env: n}, "files": [...]}``."""
        skipped: dict[str, int] = {}
        for entry in self.skipped:
            skipped[entry.env_name] = skipped.get(entry.env_name, 0) + entry.count
        return {"loaded": self.counts(), "skipped": skipped, "files": list(self.files)}

    def report(self) -> str:
        by_env = ", ".join(f"{name}: {n}" for name, n in sorted(self.counts().items())) or "none"
        names = ", ".join(Path(f).name for f in self.files)
        lines = [f"loaded {len(self.tasks)} task(s) from {names} ({by_env})"]
        lines += [s.describe() for s in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _error_field(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]) or "(row)", err["msg"]


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable parquet file: {exc}") from exc
    yield from table.to_pylist()


def _read_json(path: Path) -> Iterator[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    if path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {i + 1}: not valid JSON: {exc.msg}") from None
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a JSON task file must hold a list of task objects")
    yield from rows


def _task_from_verl(row: dict[str, Any], where: str) -> Task:
    parsed = VerlRow.model_validate(row)
    kwargs = parsed.extra_info.tools_kwargs.interact_with_env.create_kwargs
    # A parquet file that mixes gyms has the union of their columns; a key another gym uses is
    # null in this row and is not part of this task's payload.
    payload = kwargs.model_dump(exclude_none=True)
    return Task(
        id=kwargs.task_id,
        env_name=kwargs.env_name,
        data_source=parsed.data_source,
        prompt=[m.model_dump() for m in parsed.prompt],
        payload=payload,
        source=where,
    )


def _task_from_json(row: Any, where: str) -> Task:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a task must be a JSON object, got {type(row).__name__}")
    parsed = JsonTaskRow.model_validate(row)
    payload = {k: v for k, v in row.items() if k not in ("data_source", "prompt")}
    return Task(
        id=parsed.id,
        env_name=parsed.env_name,
        data_source=parsed.data_source or parsed.env_name,
        prompt=[m.model_dump() for m in parsed.prompt or []],
        payload=payload,
        source=where,
    )


_READERS = {
    ".parquet": (_read_parquet, _task_from_verl, "row"),
    ".json": (_read_json, _task_from_json, "row"),
    ".jsonl": (_read_json, _task_from_json, "line"),
}


def _validator_error(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ValidationError):
        dotted, msg = _error_field(exc)
        return f"payload.{dotted}", msg
    return getattr(exc, "field", "payload"), str(exc)


def check_prompt_lengths(tasks: list[Task], count_tokens: Any, limit: int) -> None:
    """Refuse a task whose opening prompt is longer than ``limit`` tokens (``data.max_prompt_length``),
    naming its file and row, before any model memory is spent on it. ``count_tokens(messages)``
    counts the prompt as the policy will see it (chat template and system prompt applied).
    Tasks without a prompt (the environment writes the opening) are checked by the rollout
    engine when the episode starts."""
    for task in tasks:
        if not task.prompt:
            continue
        length = int(count_tokens(task.prompt))
        if length > limit:
            raise DataError(
                f"{task.source or 'task ' + repr(task.id)}: the prompt is {length} tokens, longer than "
                f"data.max_prompt_length ({limit}); shorten the prompt or raise the limit"
            )


def load_tasks(
    paths: str | Path | list[str | Path],
    registry: Registry,
    *,
    max_tasks: int | None = None,
    env_settings: dict[str, dict[str, Any]] | None = None,
) -> TaskSet:
    """Load and validate the tasks of ``paths`` (parquet, JSON or JSONL; see the module doc).

    ``max_tasks`` keeps the first N runnable tasks. ``env_settings`` (the recipe's ``env``
    mapping) is passed to each environment's ``validate_task`` as ``settings=`` so that, e.g., a
    custom IntentionGym task bank is used for validation too.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no task files given")
    installed = registry.names(Kind.ENVIRONMENT)
    result = TaskSet(files=[str(p) for p in paths])
    skipped: dict[tuple[str, str], SkippedRows] = {}

    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise DataError(f"task file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix not in _READERS:
            raise DataError(f"{path}: unknown task file type {suffix!r}; expected .parquet, .json or .jsonl")
        read, to_task, unit = _READERS[suffix]
        for i, row in enumerate(read(path)):
            if max_tasks is not None and len(result.tasks) >= max_tasks:
                break
            where = f"{path} {unit} {i + 1 if unit == 'line' else i}"
            try:
                task = to_task(row, where)
            except ValidationError as exc:
                dotted, msg = _error_field(exc)
                raise DataError(f"{where}: {dotted}: {msg}") from None

            try:
                factory = registry.get(Kind.ENVIRONMENT, task.env_name)
            except PluginConflictError as exc:  # two plugins claim it: which one would run is not ours to guess
                raise PluginConflictError(f"{where}: env_name: {exc}") from None
            except UnknownNameError as exc:
                reason = "no installed environment plugin"
                if task.env_name in installed:  # registered, but its optional dependency is missing
                    reason = str(exc)
                key = (str(path), task.env_name)
                if key not in skipped:
                    skipped[key] = SkippedRows(task.env_name, 0, str(path), installed, reason)
                skipped[key].count += 1
                continue

            validate = getattr(factory, "validate_task", None)
            if callable(validate):
                try:
                    if env_settings is None:
                        validate(task)
                    else:
                        validate(task, settings=env_settings.get(task.env_name, {}))
                except UserError:
                    raise
                except (ValueError, ValidationError) as exc:
                    dotted, msg = _validator_error(exc)
                    raise DataError(f"{where}: {dotted}: {msg}") from None
            result.tasks.append(task)

    result.skipped = list(skipped.values())
    for entry in result.skipped:
        log.warning(entry.describe())
    if not result.tasks:
        detail = "; ".join(s.describe() for s in result.skipped)
        raise DataError(
            f"no loadable tasks in {', '.join(str(p) for p in paths)}" + (f": {detail}" if detail else "")
        )
    return result
