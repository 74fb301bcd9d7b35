"""snapfs's errors: the content package's tree, shared so one table per boundary suffices.

Content errors (a missing blob, a failed verification, a registry that is down) travel up
through the snapshotter unchanged; the gRPC service maps this one tree to status codes
(snapfs.daemon.snapshots_service), the FUSE layer maps it to errno (snapfs.fuse).
:func:`single_errors` takes a trio nursery's group of one apart, so a caller sees the error
itself. Must not translate errors to any boundary's codes: those tables live at the boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from content.errors import (
    AlreadyExists,
    ContentError,
    DigestMismatch,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)

SnapfsError = ContentError


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested groups of one, else the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextlib.contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise a group of one (however nested) as its one error. A nursery wraps the body's
    own exception in a group; callers expect the exception itself (a NotFound from ``snapfs
    pull`` must stay a NotFound). A group of several is re-raised as it is."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner = single_error(group)
        if inner is group:
            raise
        raise inner from None

__all__ = [
    "AlreadyExists",
    "ContentError",
    "DigestMismatch",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "SnapfsError",
    "Unauthorized",
    "Unavailable",
    "single_error",
    "single_errors",
]
