"""Retries with exponential backoff for simulator calls.

Simulators retry by themselves (never inside a client library) so that attempts, retries and
failures are counted exactly. A call is retried only when ``is_retryable`` says the error is
transient; when the attempts run out, :class:`RetriesExhausted` carries the last error.

A server that says how long to wait (``Retry-After`` in seconds or as an HTTP date, or OpenAI's
``retry-after-ms``, on a 429 or 503) is believed: the wait before the next attempt is the
longer of the backoff and that time, capped by ``RetryPolicy.max_retry_after`` (the simulator
sets it to its call time-out, so one answer cannot park a call for an hour).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``num_retries`` retries after the first attempt; the wait before retry ``k`` (0-based)
    is ``backoff * 2**k``, capped at ``max_backoff`` seconds."""

    num_retries: int
    backoff: float
    max_backoff: float = 30.0
    max_retry_after: float = 60.0

    @property
    def max_attempts(self) -> int:
        return self.num_retries + 1

    def delay(self, retry_index: int, retry_after: float | None = None) -> float:
        """The wait before retry ``retry_index``: the backoff, or the server's ``Retry-After``
        when that is longer (capped by ``max_retry_after``)."""
        backoff = min(self.backoff * (2 ** retry_index), self.max_backoff)
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.max_retry_after))


def retry_after_seconds(exc: BaseException, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from the headers of the HTTP response an error
    carries (the OpenAI SDK's and LiteLLM's exceptions keep it in ``.response``); ``None``
    when it said nothing usable."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            value = float(millis) / 1000.0
            return value if math.isfinite(value) and value >= 0 else None
        text = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if not text:
        return None
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0 else None


class RetriesExhausted(Exception):
    """Every attempt failed (or one failed with an error that is not worth retrying)."""

    def __init__(self, last_error: BaseException, attempts: int, retryable: bool):
        super().__init__(f"{attempts} attempt(s); last error: {last_error}")
        self.last_error = last_error
        self.attempts = attempts
        self.retryable = retryable


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    is_retryable: Callable[[BaseException], bool],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> tuple[T, int]:
    """Await ``attempt()`` until it succeeds; returns ``(result, attempts)``.

    ``on_retry(retry_index, error, delay)`` is called before each backoff sleep. Errors that are
    not ``Exception`` subclasses (cancellation, KeyboardInterrupt) propagate untouched.
    """
    for attempt_index in range(policy.max_attempts):
        try:
            return await attempt(), attempt_index + 1
        except Exception as exc:
            retryable = is_retryable(exc)
            if not retryable or attempt_index + 1 >= policy.max_attempts:
                raise RetriesExhausted(exc, attempt_index + 1, retryable) from exc
            delay = policy.delay(attempt_index, retry_after_seconds(exc))
            if on_retry is not None:
                on_retry(attempt_index, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
