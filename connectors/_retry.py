"""Bounded retries with exponential backoff and jitter for store calls, and the mapping of a client
library's exception onto our errors (``StoreUnavailableError`` when retries are exhausted,
``StoreError`` otherwise), with credentials scrubbed from every message."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from embedrail.errors import EmbedrailError, StoreError, StoreUnavailableError
from embedrail.secrets import short_error

__all__ = ["RetryPolicy", "retry_call"]

log = logging.getLogger("connectors")
T = TypeVar("T")


@dataclass(slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter."""

    attempts: int = 4  # total tries
    initial: float = 0.5  # seconds before the 2nd try
    maximum: float = 8.0  # cap on one backoff
    deadline: float = 60.0  # stop retrying once this much time has passed since the first try

    def delays(self) -> Iterator[float]:
        d = self.initial
        for _ in range(self.attempts - 1):
            yield min(d, self.maximum) * (0.75 + random.random() * 0.5)
            d *= 2


def retry_call(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
    what: str,
    url: str,
    secrets: Sequence[str | None] = (),
    passthrough: Callable[[BaseException], bool] | None = None,
) -> T:
    """Run ``fn``; retry transient failures with backoff; raise ``StoreUnavailableError`` when exhausted.

    Other failures become ``StoreError`` (message scrubbed of credentials), except our own errors and
    those ``passthrough`` selects (e.g. "not found", which callers handle).
    """
    start = time.monotonic()
    delays = policy.delays()
    while True:
        try:
            return fn()
        except Exception as e:
            if isinstance(e, EmbedrailError) or (passthrough is not None and passthrough(e)):
                raise
            if not is_transient(e):
                raise StoreError(f"{url}: {what} failed: {short_error(e, *secrets)}") from None
            delay = next(delays, None)
            elapsed = time.monotonic() - start
            if delay is None or elapsed + delay > policy.deadline:
                raise StoreUnavailableError(
                    f"{url}: {what} failed after {elapsed:.1f}s and retries: "
                    f"{short_error(e, *secrets)}. Is the store running and reachable?"
                ) from None
            log.warning("%s: %s failed (%s); retrying in %.1fs", url, what, short_error(e, *secrets), delay)
            time.sleep(delay)
