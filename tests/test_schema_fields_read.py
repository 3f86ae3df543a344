"""Every recipe key is read by some code: a key that nothing reads is a promise the SDK does not
keep (``data.max_prompt_length`` once sat in every recipe, documented, and unread).

For each field of the schema (userrl_core/config/schema.py), the source of userrl_core/ and
plugins/ outside the schema must read it as an attribute. A distinctive field name is enough
(``.max_prompt_length``); a common one (``level``, ``name``, ``seed``) must be read through its
section or a settings object (``logging.level``, ``config.seed``, ``settings.host``).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from fixtures.distributions import REPO_ROOT
from userrl_core.config.schema import RunConfig

SOURCES = [p for root in ("userrl_core", "plugins") for p in (REPO_ROOT / root).rglob("*.py")
           if p.name != "schema.py"]
# Field names too common to prove a read on their own: these need "<parent>.<field>".
GENERIC = {"name", "level", "mode", "enabled", "model", "path", "port", "host", "gpu", "seed", "n", "address",
           "action", "threshold", "patience", "changes", "timeout", "temperature", "backend", "dtype", "lr",
           "report", "device", "extra", "progress", "betas"}


def schema_fields(model: type[BaseModel] = RunConfig, parent: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, parent section name, field) for every leaf and section of the schema."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{parent}.{name}" if parent else name
        out.append((key, parent.split(".")[-1], name))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += schema_fields(annotation, key)
        args = getattr(annotation, "__args__", ())
        if len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):  # dict[str, Model]
            out += [(f"{key}.<name>.{f}", "rule", f) for f in args[1].model_fields]
    return out


def test_every_schema_field_is_read_somewhere():
    text = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
    unread = []
    for key, parent, field in schema_fields():
        if field in GENERIC and parent:
            pattern = rf"\b(?:{re.escape(parent)}|config|settings|cfg)\.{re.escape(field)}\b"
        else:
            pattern = rf"\.{re.escape(field)}\b|\[[\"']{re.escape(field)}[\"']\]"
        if not re.search(pattern, text):
            unread.append(key)
    assert not unread, f"recipe keys that no code reads (implement or delete them): {unread}"
