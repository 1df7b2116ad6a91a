"""Which errors of a store's client library are worth retrying, bounded retries with backoff and jitter,
and the mapping of a client library's exception onto our errors, with credentials scrubbed from every
message.

Each store declares an ``ErrorTable``: exception classes by dotted path (resolved lazily, so a store's
client is imported only when it is used) and the statuses that decide for errors carrying one. Nothing
is decided from an error's message text. An exception ``classify`` does not know is a bug: it is not
retried and reaches the caller as itself, with its own traceback.

==============  ===================================================  ====================================
kind            what it is                                           what the caller gets
==============  ===================================================  ====================================
``transient``   connection refused or reset, a timeout, HTTP 429 /   retried with backoff, then
                502 / 503 / 504, gRPC UNAVAILABLE, a driver's         ``StoreUnavailableError`` (retryable)
                connection loss
``rejected``    the store refused the request: HTTP 4xx, a TLS or    ``StoreRejectedError``, at once
                auth failure, a constraint, a value it cannot hold    (not retryable)
``failed``      the store failed (HTTP 500, gRPC INTERNAL): the      ``StoreError``, at once (retryable:
                request was fine                                       a later run may succeed)
``bug``         anything else                                        the exception itself (not retryable)
==============  ===================================================  ====================================
"""

from __future__ import annotations

import importlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal, TypeVar

from embedrail.errors import EmbedrailError, StoreError, StoreRejectedError, StoreUnavailableError
from embedrail.secrets import short_error

__all__ = ["BASE_ERRORS", "SQLSTATE_KINDS", "ErrorKind", "ErrorTable", "RetryPolicy", "classify", "retry_call", "sqlstate_kind",
           "status_of"]

log = logging.getLogger("connectors")
T = TypeVar("T")
ErrorKind = Literal["transient", "rejected", "failed", "bug"]

#: statuses (HTTP, or gRPC codes by name) that a later try may get past
TRANSIENT_STATUS = frozenset({429, 502, 503, 504, "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})
#: statuses that say the server failed, not the request
FAILED_STATUS = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})


@dataclass(frozen=True)
class ErrorTable:
    """How a client library signals trouble, by exception class (dotted paths, resolved lazily; a path
    whose module is not installed matches nothing). Checked in this order: ``never`` (subclasses of a
    transient class that are not, e.g. a TLS error under the connection error), ``transient``,
    ``status`` (errors that carry an HTTP status or a gRPC code: the status decides), ``rejected``,
    ``failed`` (see ``classify`` for the exceptions an error wraps)."""

    transient: tuple[str, ...] = ()
    never: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    def extend(self, **more: tuple[str, ...]) -> ErrorTable:
        """This table with more classes in some rows (a store's table on top of ``BASE_ERRORS``)."""
        return ErrorTable(**{k: getattr(self, k) + tuple(more.get(k, ())) for k in ("transient", "never", "status", "rejected", "failed")})


#: what every store shares: the socket level and httpx (which several clients use)
BASE_ERRORS = ErrorTable(
    transient=("builtins.ConnectionError", "builtins.TimeoutError", "httpx.TimeoutException", "httpx.NetworkError",
               "httpx.RemoteProtocolError"),  # fmt: skip
)


#: what a PostgreSQL error is, by SQLSTATE code or class (its first two characters); any other: rejected
#: (22 data exception, 23 integrity constraint, 42 syntax or access rule, 54 program limit, ...)
SQLSTATE_KINDS: dict[str, ErrorKind] = {
    "08": "transient",  # connection exception
    "40": "transient",  # transaction rollback: serialization failure, deadlock
    "53": "transient",  # insufficient resources: too many connections, out of memory, disk full
    "57": "transient",  # operator intervention: shutdown, statement timeout, cannot connect now
    "55P03": "transient",  # lock not available
    "58": "failed",  # system error (I/O)
    "XX": "failed",  # internal error
}


def sqlstate_kind(state: str) -> ErrorKind:
    """What a PostgreSQL error is, by its SQLSTATE (``SQLSTATE_KINDS``)."""
    return SQLSTATE_KINDS.get(state, SQLSTATE_KINDS.get(state[:2], "rejected"))


@cache
def _resolve(path: str) -> type[BaseException] | None:
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def _isinstance(e: BaseException, paths: Sequence[str]) -> bool:
    return any((cls := _resolve(p)) is not None and isinstance(e, cls) for p in paths)


def status_of(e: BaseException) -> int | str | None:
    """The HTTP status an error carries (``status_code``, ``meta.status``), or its gRPC code's name."""
    for value in (getattr(e, "status_code", None), getattr(getattr(e, "meta", None), "status", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    code = getattr(e, "code", None)  # gRPC: a StatusCode; Chroma's errors: an HTTP status
    if callable(code):
        try:
            value = code()
        except Exception:  # noqa: BLE001 - a ``code`` of another meaning
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        name = getattr(value, "name", None)
        return name if isinstance(name, str) else None
    return None


def _by_status(status: int | str | None) -> ErrorKind:
    if status in TRANSIENT_STATUS:
        return "transient"
    if isinstance(status, int):
        return "rejected" if 400 <= status < 500 else "failed"
    return "failed" if status in FAILED_STATUS or status is None else "rejected"


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it wraps (``raise X from Y``, or raised while handling Y), innermost last."""
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(out) < 6 and cur not in out:
        out.append(cur)
        cur = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
    return out


def classify(e: BaseException, table: ErrorTable) -> ErrorKind:
    """What ``e`` is by ``table`` (see the module doc). A transient error anywhere in the chain of
    exceptions ``e`` wraps makes it transient (clients wrap a dropped connection into their own query
    error); otherwise the first exception of the chain that the table lists decides."""
    chain = _chain(e)
    for cur in chain:
        if _isinstance(cur, table.never):
            return "rejected"
        if _isinstance(cur, table.transient):
            return "transient"
        if _isinstance(cur, table.status) and _by_status(status_of(cur)) == "transient":
            return "transient"
    for cur in chain:
        if _isinstance(cur, table.status):
            return _by_status(status_of(cur))
        if _isinstance(cur, table.rejected):
            return "rejected"
        if _isinstance(cur, table.failed):
            return "failed"
    return "bug"


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


def as_store_error(e: BaseException, kind: ErrorKind, message: str) -> BaseException:
    """Our error for a classified client exception (the exception itself for a bug)."""
    if kind == "bug":
        return e
    cls = {"transient": StoreUnavailableError, "rejected": StoreRejectedError, "failed": StoreError}[kind]
    err = cls(message)
    err.__cause__ = e
    return err


def retry_call(
    fn: Callable[[], T],
    *,
    classify: Callable[[BaseException], ErrorKind],
    policy: RetryPolicy,
    what: str,
    url: str,
    secrets: Sequence[str | None] = (),
    passthrough: Callable[[BaseException], bool] | None = None,
) -> T:
    """Run ``fn``; retry transient failures with backoff; raise ``StoreUnavailableError`` when exhausted.

    A rejected request becomes ``StoreRejectedError``, a server failure ``StoreError`` (messages scrubbed
    of credentials, the client's exception kept as the cause); our own errors, those ``passthrough``
    selects (e.g. "not found", which callers handle) and bugs are raised as they are.
    """
    start = time.monotonic()
    delays = policy.delays()
    while True:
        try:
            return fn()
        except Exception as e:
            if isinstance(e, EmbedrailError) or (passthrough is not None and passthrough(e)):
                raise
            kind = classify(e)
            if kind == "bug":
                raise
            if kind != "transient":
                raise as_store_error(e, kind, f"{url}: {what} failed: {short_error(e, *secrets)}") from e
            delay = next(delays, None)
            elapsed = time.monotonic() - start
            if delay is None or elapsed + delay > policy.deadline:
                raise StoreUnavailableError(
                    f"{url}: {what} failed after {elapsed:.1f}s and retries: "
                    f"{short_error(e, *secrets)}. Is the store running and reachable?"
                ) from e
            log.warning("%s: %s failed (%s); retrying in %.1fs", url, what, short_error(e, *secrets), delay)
            time.sleep(delay)
