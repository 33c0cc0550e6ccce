"""Code shared by the pipeline and serving environments: settings, errors, object store, Arrow I/O.

Everything here must import in both environments (pyarrow 10 with NumPy 1 in the pipeline
environment, pyarrow >= 20 with NumPy 2 in the serving environment).
"""

from kfloop.core.errors import (
    ConfigError,
    DataError,
    IntegrityError,
    KfloopError,
    ObjectNotFound,
    ObjectStoreAuthError,
    ObjectStoreError,
    ObjectStoreUnavailable,
    StackError,
)
from kfloop.core.settings import Secret, Settings

__all__ = [
    "ConfigError",
    "DataError",
    "IntegrityError",
    "KfloopError",
    "ObjectNotFound",
    "ObjectStoreAuthError",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "Secret",
    "Settings",
    "StackError",
]
