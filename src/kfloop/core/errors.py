"""Typed errors. Every message says what was wrong, with which value, and what to do."""

from __future__ import annotations


class KfloopError(Exception):
    """Base class of every error kfloop raises on purpose."""


class ConfigError(KfloopError, ValueError):
    """A setting or parameter has a value kfloop cannot use.

    ``field`` names the environment variable, parameter or config key at fault.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(KfloopError, ValueError):
    """Input data is missing, malformed or contradicts its schema."""


class ObjectStoreError(KfloopError):
    """An object store operation failed."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The object store endpoint could not be reached (after bounded retries)."""


class ObjectStoreAuthError(ObjectStoreError):
    """The object store refused the credentials."""


class ObjectNotFound(ObjectStoreError, FileNotFoundError):
    """A bucket or object does not exist."""


class IntegrityError(ObjectStoreError):
    """Downloaded bytes do not match the size or checksum recorded at upload."""


class StackError(KfloopError):
    """A local stack service could not be started, checked or stopped."""
