"""Retries with exponential backoff for simulator calls.

Simulators retry by themselves (never inside a client library) so that attempts, retries and
failures are counted exactly. A call is retried only when ``is_retryable`` says the error is
transient; when the attempts run out, :class:`RetriesExhausted` carries the last error.
"""

from __future__ import annotations

import asyncio
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

    @property
    def max_attempts(self) -> int:
        return self.num_retries + 1

    def delay(self, retry_index: int) -> float:
        return min(self.backoff * (2 ** retry_index), self.max_backoff)


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
            delay = policy.delay(attempt_index)
            if on_retry is not None:
                on_retry(attempt_index, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
