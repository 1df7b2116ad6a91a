"""The one small hierarchy of errors a user can cause.

Every message says what to do. The CLI turns any ``EmbedrailError`` into one line on stderr and a
non-zero exit, without a traceback. Anything else escaping is a bug.

``retryable`` answers the one question every caller asks of an error: can trying again help?

- ``False``: the user must change something (a bad option, an index of another model, a dims limit,
  bad input). The sync engine stops the run before writing; Airflow fails the task without retries.
- ``True``: a store or server is down, overloaded or refused a write. The sync engine marks that
  target failed and goes on with the others; Airflow retries the task; the next run catches up.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ConfigError",
    "DimensionLimitError",
    "EmbedrailError",
    "IndexMismatchError",
    "InputError",
    "ModelError",
    "RemoteEmbeddingError",
    "StoreError",
    "StoreUnavailableError",
    "SyncError",
    "WriteError",
    "is_retryable",
    "LedgerError",
    "RunConflictError",
    "UnsupportedError",
]


class EmbedrailError(Exception):
    """Base of every error a user can cause or fix (bad input, bad config, a store that is down)."""

    exit_code: int = 2
    #: can the same call succeed later without the user changing anything?
    retryable: bool = False


class ConfigError(EmbedrailError, ValueError):
    """A bad argument, URL, option combination or configuration file."""


class UnsupportedError(EmbedrailError):
    """The store cannot do what was asked (e.g. hybrid search on a store without keyword search); the
    message says what it can do instead. Not retryable."""


class InputError(EmbedrailError, ValueError):
    """Bad input data: empty text, invalid UTF-8, a missing id/text field, duplicate ids."""


class ModelError(EmbedrailError):
    """The embedding model cannot be loaded or cannot do what was asked (e.g. unsupported dims)."""


class RemoteEmbeddingError(ModelError):
    """A remote (OpenAI-compatible) embedding server failed or answered something unusable."""

    retryable = True


class StoreError(EmbedrailError):
    """Base for vector-store problems (a refused request, a broken index): retrying may help."""

    retryable = True


class StoreUnavailableError(StoreError):
    """The store is down, unreachable or timed out after bounded retries."""

    exit_code = 3


class IndexMismatchError(StoreError):
    """The existing index/collection holds another dimension, metric or embedding fingerprint."""

    retryable = False


class DimensionLimitError(StoreError, ConfigError):
    """The requested vector dimension is above what the store's server accepts."""

    retryable = False


class WriteError(StoreError):
    """Some items of a write were rejected by the store (the good ones were written).

    Raised by ``UpsertResult.raise_on_failure()`` / ``DeleteResult.raise_on_failure()`` for callers that
    prefer an exception to inspecting the result; ``failed`` maps each rejected id to the reason.
    """

    def __init__(self, message: str, failed: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed: dict[str, str] = dict(failed or {})


class LedgerError(EmbedrailError):
    """The sync ledger's database could not be reached or kept refusing a transaction (after retries).

    Nothing is lost: the ledger only moves after a store acknowledged, so the next run redoes what this
    one could not record. Retryable (a database restart or failover)."""

    retryable = True


class SyncError(EmbedrailError):
    """The sync engine could not complete a run (the report says which targets failed)."""

    exit_code = 1
    retryable = True


class RunConflictError(SyncError):
    """Another run holds the target (its lease in the ledger is live): two runs writing one target at
    once could leave the store and the ledger disagreeing, so this one stops before it writes. Retryable:
    waiting for the other run helps."""


def is_retryable(exc: BaseException) -> bool:
    """``exc.retryable`` for our errors. Anything else (a client library's connection reset, a timeout)
    is treated as a problem of the store it came from: retryable. ``KeyboardInterrupt`` and other
    ``BaseException`` s are not."""
    if isinstance(exc, EmbedrailError):
        return exc.retryable
    return isinstance(exc, Exception)
