"""Search backends for SearchGym, chosen by ``env.SearchGym.search.backend``.

* ``serper``: a Serper-compatible web search API, as UserRL uses
  (``gyms/SearchGym/searchgym/utils.py``): ``POST <url>`` with the JSON body
  ``{"q": query, "num": n}`` and the key in the ``X-API-KEY`` header; the answer is a JSON
  object whose ``answerBox`` (``title`` with ``answer`` or ``snippet``) and ``organic`` results
  (``title``, ``snippet``) are listed for the agent, numbered, at most ``num_results``. The key
  is read from the environment variable the recipe names (``api_key_env``) when the backend is
  built, kept out of every message, log line and ``repr``, and sent only in that header.
  Connection errors, time-outs, HTTP 429 and 5xx are retried ``retries`` times with doubling
  back-off; other HTTP errors and bodies that are not a JSON object fail at once. A failure
  raises :class:`SearchError`, which the environment turns into a failed step (no reward).
* ``none``: searching is switched off (an offline run without a search API); each search is
  answered with a message saying so, counted in the episode metrics. It is never chosen
  silently: the recipe says ``backend: none``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from userrl_core.errors import MissingRequirementError

DEFAULT_URL = "https://google.serper.dev/search"
DEFAULT_KEY_ENV = "SERPER_API_KEY"
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class SearchSettings(BaseModel):
    """``env.SearchGym.search``: which backend answers ``search`` actions, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["serper", "none"] = Field(
        "serper", description="'serper': a Serper-compatible HTTP API (UserRL's); 'none': searching is switched off."
    )
    url: str = Field(DEFAULT_URL, description="Search endpoint (POST, Serper's request and response format).")
    api_key_env: str = Field(DEFAULT_KEY_ENV, description="Environment variable that holds the API key (never the key).")
    num_results: int = Field(5, ge=1, le=20, description="Results listed per search (UserRL: 5).")
    timeout: float = Field(15.0, gt=0.0, description="Seconds per HTTP request.")
    retries: int = Field(2, ge=0, description="Retries after a connection error, time-out, 429 or 5xx.")
    retry_backoff: float = Field(1.0, ge=0.0, description="First back-off in seconds; doubles each retry.")


class SearchError(RuntimeError):
    """A search that failed after its retries (the message never holds the key)."""


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str) -> str: ...


class DisabledSearch:
    """``backend: none``: every search is answered with this notice."""

    name = "none"
    notice = "Web search is not available in this run. Answer from what you know."

    async def search(self, query: str) -> str:
        return self.notice


class SerperSearch:
    """A Serper-compatible search API over HTTP (see the module docstring)."""

    name = "serper"

    def __init__(self, settings: SearchSettings, api_key: str):
        self.settings = settings
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"SerperSearch(url={self.settings.url!r}, api_key_env={self.settings.api_key_env!r})"

    async def search(self, query: str) -> str:
        body = await self._post({"q": query, "num": self.settings.num_results})
        return format_results(query, body, self.settings.num_results)

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx  # here, not at the top: every recipe's validation loads this plugin

        s = self.settings
        headers = {"X-API-KEY": self._api_key, "Content-Type": "application/json"}
        problem = ""
        for attempt in range(s.retries + 1):
            if attempt:
                await asyncio.sleep(s.retry_backoff * 2 ** (attempt - 1))
            try:
                async with httpx.AsyncClient(timeout=s.timeout) as client:
                    response = await client.post(s.url, json=payload, headers=headers)
            except httpx.TimeoutException:
                problem = f"no answer within {s.timeout:g} s"
                continue
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRYABLE:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                hint = f" (check the key in ${s.api_key_env})" if response.status_code in (401, 403) else ""
                raise SearchError(f"search API {s.url} answered HTTP {response.status_code}{hint}")
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise SearchError(f"search API {s.url} answered with a body that is not a JSON object")
            return body
        raise SearchError(f"search API {s.url} failed after {s.retries + 1} attempt(s): {problem}")


def _text(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def format_results(query: str, body: dict[str, Any], limit: int) -> str:
    """The agent's view of a Serper answer: the answer box first, then organic results."""
    lines: list[str] = []
    box = body.get("answerBox")
    if isinstance(box, dict) and _text(box.get("title")) and (_text(box.get("answer")) or _text(box.get("snippet"))):
        label, text = ("Answer", _text(box["answer"])) if _text(box.get("answer")) else ("Snippet", _text(box["snippet"]))
        lines.append(f"{len(lines) + 1}. {_text(box['title'])}\n   {label}: {text}")
    organic = body.get("organic")
    for item in organic if isinstance(organic, list) else []:
        if len(lines) >= limit:
            break
        if isinstance(item, dict) and _text(item.get("title")) and _text(item.get("snippet")):
            lines.append(f"{len(lines) + 1}. {_text(item['title'])}\n   {_text(item['snippet'])}")
    if not lines:
        return f"No results for {query!r}."
    return f"Results for {query!r}:\n" + "\n".join(lines)


def build_backend(settings: SearchSettings, key_path: str) -> SearchBackend:
    """The configured backend; a missing key is one clear error naming the variable."""
    if settings.backend == "none":
        return DisabledSearch()
    key = os.environ.get(settings.api_key_env, "")
    if not key.strip():
        raise MissingRequirementError(
            f"{key_path}.api_key_env: the environment variable {settings.api_key_env} that should hold the search "
            f"API key is not set (or set {key_path}.backend: none to run without web search)"
        )
    return SerperSearch(settings, key.strip())
