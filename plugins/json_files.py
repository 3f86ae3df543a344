"""Reading a gym's own JSON data file (task banks, entities, stories): one error naming the file,
or the file and the entry, whatever goes wrong, so each gym only says what its rows are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_json(file: str, holds: type, what: str, error: Callable[[str], Exception]) -> Any:
    """The JSON in ``file``, which must be a ``holds`` (``list`` or ``dict``); ``what`` names the
    file in messages ("SearchGym questions file x.json") and ends with what it must hold."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{what.split(' must hold ')[0]} is not readable JSON: {exc}") from None
    if not isinstance(data, holds):
        raise error(what)
    return data


def validated(model: type[M], row: Any, where: str, error: Callable[[str], Exception]) -> M:
    """``model.model_validate(row)``; a bad row raises ``error("<where>: <field>: <problem>")``."""
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(entry)"
        raise error(f"{where}: {field}: {err['msg']}") from None
