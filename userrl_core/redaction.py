"""Keeping API keys out of everything a run prints and writes.

Keys live in environment variables; a recipe only names the variable (``simulator.api_key_env``).
Three layers keep a key from leaking anyway:

1. **Refusal.** :func:`check_no_literal_secrets` rejects a recipe (exit 2) that holds a key
   itself: a secret-named key with a literal value (``simulator.extra.api_key=...``), a key
   pasted where a variable name belongs (``simulator.api_key_env=sk-...``), credentials inside
   a URL (``https://user:pw@host``, ``?api_key=...``), or any value that looks like a key. The
   message names the recipe key and never repeats the value.
2. **Redaction of known values.** The values of the environment variables a recipe names as
   keys (every ``*_env`` setting), and of variables whose names say they hold secrets
   (``*_API_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``), are replaced by ``***`` in
   everything that goes through :func:`redact`: the console (the CLI wraps stdout and stderr),
   transcripts, ``report.md``, ``summary.json``, ``config.yaml``, the plan, and simulator replies
   before the policy sees them.
3. **Redaction of key-shaped text** (``sk-...``, ``Bearer ...``, GitHub/HF/AWS/Slack token
   shapes, URL credentials) in the same places, for keys nobody told us about.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Iterable, Iterator

MASK = "***"
MIN_SECRET_LENGTH = 8
"""Environment values shorter than this are not treated as secrets (``1``, ``true``...)."""

SECRET_NAME = re.compile(
    r"(?i)(api[_-]?key|apikey|secret|passw(or)?d|access[_-]?token|auth[_-]?token|bearer|credential|"
    r"(^|_)key$|(^|_)token$|^key$|^token$)"
)
"""Names of settings and environment variables that hold secrets. ``max_tokens`` and the like
do not match (a secret name ends in ``key``/``token`` or says ``secret``/``password``)."""

ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Each shape with literals one of which any match must contain: a text holding none of them is
# not scanned (most simulator replies and transcript lines hold none).
_KEY_SHAPES = [
    # OpenAI, Anthropic, DashScope
    (re.compile(r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}"), ("sk-", "pk-", "rk-")),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), ("AKIA",)),  # AWS access key id
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),  # GitHub
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), ("hf_",)),  # Hugging Face
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), ("xox",)),  # Slack
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), ("AIza",)),  # Google
]
_CONTEXT_SHAPES = [
    (re.compile(r"(\bBearer\s+)([A-Za-z0-9._~+/=-]{16,})"), ("Bearer",)),
    (re.compile(r"(://[^/\s:@]+:)([^@\s/]+)(@)"), ("://",)),  # user:password@host
    (re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|secret|password)=)([^&\s#\"']+)"), ("=",)),
]


_ANY_LITERAL = tuple(literal for _, literals in (*_KEY_SHAPES, *_CONTEXT_SHAPES) for literal in literals)


def _may_match(text: str, literals: tuple[str, ...]) -> bool:
    return any(map(text.__contains__, literals))


def looks_like_key(value: str) -> bool:
    """True for text shaped like an API key or holding credentials."""
    return any(_may_match(value, literals) and p.search(value) for p, literals in (*_KEY_SHAPES, *_CONTEXT_SHAPES))


class Redactor:
    """Replaces known secret values and key-shaped text with ``***``."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        value = (value or "").strip()
        if len(value) >= MIN_SECRET_LENGTH and value not in self._values:
            self._values.append(value)
            self._values.sort(key=len, reverse=True)  # a longer secret first, if one contains another

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self._values)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        if not _may_match(text, _ANY_LITERAL):  # one pass of cheap substring tests for most texts
            return text
        for pattern, literals in _KEY_SHAPES:
            if _may_match(text, literals):
                text = pattern.sub(MASK, text)
        for pattern, literals in _CONTEXT_SHAPES:
            if _may_match(text, literals):
                text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(3) if m.lastindex and m.lastindex >= 3 else ""),
                               text)
        return text


_ACTIVE = Redactor()


def redact(text: str) -> str:
    """``text`` with every known secret and key-shaped piece replaced by ``***``."""
    return _ACTIVE(text)


def protect(value: str | None) -> None:
    """Add one secret value to what :func:`redact` removes."""
    _ACTIVE.add(value)


def protect_environment(environ: dict[str, str] | None = None) -> None:
    """Protect the values of environment variables whose names say they hold secrets."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if SECRET_NAME.search(name):
            _ACTIVE.add(value)


def named_key_variables(data: Any) -> set[str]:
    """Environment-variable names a recipe names as keys: the values of its ``*_env``
    settings (``simulator.api_key_env``, a plugin's ``search_key_env``, ...)."""
    return {value for key, value in _leaves(data) if key.endswith("_env") and isinstance(value, str)
            and ENV_VAR_NAME.match(value)}


def protect_recipe_variables(data: Any, environ: dict[str, str] | None = None) -> None:
    """Protect the values of the variables :func:`named_key_variables` finds."""
    env = os.environ if environ is None else environ
    for name in named_key_variables(data):
        _ACTIVE.add(env.get(name))


def check_no_literal_secrets(data: Any, source: str = "recipe") -> None:
    """Raise :class:`~userrl_core.errors.ConfigError` naming the first recipe key that holds a
    key itself (see the module doc); the value is never repeated."""
    from userrl_core.errors import ConfigError

    for path, value in _paths(data):
        leaf = path.rsplit(".", 1)[-1]
        if not isinstance(value, str) or not value.strip():
            continue
        if leaf.endswith("_env"):
            if not ENV_VAR_NAME.match(value.strip()) or looks_like_key(value) or _is_protected(value):
                raise ConfigError(
                    f"{source}: {path} must name an environment variable (like DASHSCOPE_API_KEY), and what "
                    f"it holds is not a variable name; export the key as a variable and put the variable's "
                    f"name here (the value is not shown)"
                )
            continue
        if SECRET_NAME.search(leaf):
            raise ConfigError(
                f"{source}: {path} holds a literal secret; recipes and overrides never take keys (they are "
                f"saved in config.yaml and printed by --dry-run): export it as an environment variable and "
                f"name that variable in a *_env setting such as simulator.api_key_env (the value is not shown)"
            )
        if looks_like_key(value) or _is_protected(value):
            raise ConfigError(
                f"{source}: {path} holds what looks like an API key or credentials; keys come only from "
                f"environment variables (name one in simulator.api_key_env); the value is not shown"
            )


def redact_config(data: Any) -> Any:
    """A copy of a config mapping with secret-named settings masked (``*_env`` settings hold
    variable names and are kept) and every string passed through :func:`redact`."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            name = str(key)
            if isinstance(value, str) and value and SECRET_NAME.search(name) and not name.endswith("_env"):
                out[key] = MASK
            else:
                out[key] = redact_config(value)
        return out
    if isinstance(data, list):
        return [redact_config(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


def _is_protected(value: str) -> bool:
    return any(secret in value for secret in _ACTIVE.values)


def _paths(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, f"{prefix}[{index}]")
    else:
        yield prefix, data


def _leaves(data: Any) -> Iterator[tuple[str, Any]]:
    for path, value in _paths(data):
        yield path.rsplit(".", 1)[-1], value


class RedactingStream(io.TextIOBase):
    """A text stream that passes everything written through :func:`redact` to ``target``
    (the CLI puts one in front of stdout and stderr). Terminal queries go to ``target``."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._target.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._target, "errors", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)
