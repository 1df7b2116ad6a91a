"""The one small hierarchy of errors a user can cause.

Every message says what to do. The CLI turns any ``EmbedrailError`` into one line on stderr and a
non-zero exit, without a traceback. Anything else escaping is a bug.

``retryable`` answers the one question every caller asks of an error: can trying again help?

- ``False``: the user must change something (a bad option, an index of another model, a dims limit,
  bad input). The sync engine stops the run before writing; Airflow fails the task without retries.
- ``True``: a store, a server or a database is down, overloaded or failed. The sync engine marks that
  target failed and goes on with the others; Airflow retries the task; the next run catches up.

Only known transient errors are retryable. Each store declares which of its client library's errors
are transient (``connectors._retry.ErrorTable``); any other exception escaping a client library is a
bug: it is not retried and not wrapped into one of these, it keeps its own traceback
(``is_retryable`` is ``False`` for it).
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
    "IndexOwnershipError",
    "SourceUnavailableError",
    "StoreError",
    "StoreRejectedError",
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
    """Base for vector-store problems. This class itself: the store failed to do what was asked (a server
    error, HTTP 5xx): the request was fine, so a later try may succeed."""

    retryable = True


class StoreRejectedError(StoreError):
    """The store refused the request (HTTP 4xx, a constraint, a value it cannot hold, a TLS or
    authentication failure): the same request will be refused again, so it is not retried."""

    retryable = False


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


class IndexOwnershipError(EmbedrailError):
    """A non-empty index that this ledger does not know (written through another ledger, another working
    directory, or not by embedrail): an incremental run would re-embed everything and leave the documents
    deleted meanwhile in the index for good, so it stops before writing. The message names the ways out:
    ``--adopt`` (rebuild this ledger's rows from the index's records) or ``--mode full``."""

    retryable = False


class SourceUnavailableError(EmbedrailError):
    """The source could not be read (its database is down or unreachable): nothing was written for the
    documents not read, and a later run catches up. Retryable."""

    exit_code = 3
    retryable = True


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
    """``exc.retryable`` for our errors; ``False`` for anything else. The stores, the ledger and the
    sources turn the transient errors they know into ``StoreUnavailableError`` / ``LedgerError`` /
    ``SourceUnavailableError``; an exception that reaches a caller as itself is a bug (retrying it would
    only hide it)."""
    if isinstance(exc, EmbedrailError):
        return exc.retryable
    return False
