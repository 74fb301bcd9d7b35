"""snapfs's errors: the content package's tree, shared so one table per boundary suffices.

Content errors (a missing blob, a failed verification, a registry that is down) travel up
through the snapshotter unchanged; the gRPC service maps this one tree to status codes
(snapfs.daemon.snapshots_service), the FUSE layer maps it to errno (snapfs.fuse).
"""

from __future__ import annotations

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
]
