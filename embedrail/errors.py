"""The one small hierarchy of errors a user can cause.

Every message says what to do. The CLI turns any ``EmbedrailError`` into one line on stderr and a
non-zero exit, without a traceback. Anything else escaping is a bug.
"""

from __future__ import annotations


class EmbedrailError(Exception):
    """Base of every error a user can cause or fix (bad input, bad config, a store that is down)."""

    exit_code: int = 2


class ConfigError(EmbedrailError, ValueError):
    """A bad argument, URL, option combination or configuration file."""


class InputError(EmbedrailError, ValueError):
    """Bad input data: empty text, invalid UTF-8, a missing id/text field, duplicate ids."""


class ModelError(EmbedrailError):
    """The embedding model cannot be loaded or cannot do what was asked (e.g. unsupported dims)."""


class RemoteEmbeddingError(ModelError):
    """A remote (OpenAI-compatible) embedding server failed or answered something unusable."""


class StoreError(EmbedrailError):
    """Base for vector-store problems."""


class StoreUnavailableError(StoreError):
    """The store is down, unreachable or timed out after bounded retries."""

    exit_code = 3


class IndexMismatchError(StoreError):
    """The existing index/collection holds another dimension, metric or embedding fingerprint."""


class DimensionLimitError(StoreError, ConfigError):
    """The requested vector dimension is above what the store's server accepts."""


class WriteError(StoreError):
    """Some items of a write were rejected by the store (the good ones were written)."""


class SyncError(EmbedrailError):
    """The sync engine could not complete a run (the report says which targets failed)."""

    exit_code = 1
