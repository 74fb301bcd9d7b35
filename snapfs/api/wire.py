"""What both ends of the snapshots socket share: error codes, message conversions, addresses.

The one table between snapfs's error tree and gRPC status codes, used in both directions (the
server aborts with it, the client raises from it), and the proto ↔ value-type conversions.
Must not open sockets or call RPCs (``snapfs.daemon`` serves, ``snapfs.client`` calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from snapfs.api import mount_pb2, snapshots_pb2
from snapfs.errors import (
    AlreadyExists,
    ContentError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from snapfs.snapshot.types import Info, Kind, Mount

NAMESPACE_HEADER = "containerd-namespace"

# The error table: first match wins, so subclasses (DigestMismatch < InvalidArgument) inherit.
# containerd's errdefs understand the first five; anything else reaches it as "unknown".
ERROR_CODES: tuple[tuple[type[ContentError], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Internal, grpc.StatusCode.INTERNAL),
)
# The inverse, for the client. Transport-level codes become Unavailable: retrying may help.
ERRORS_BY_CODE: dict[grpc.StatusCode, type[ContentError]] = {
    **{code: cls for cls, code in ERROR_CODES},
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.UNKNOWN


def error_for(code: grpc.StatusCode, details: str) -> ContentError:
    return ERRORS_BY_CODE.get(code, Internal)(details or code.name.lower())


# -- conversions ---------------------------------------------------------------------------


def timestamp_to_proto(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def timestamp_from_proto(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def mount_to_proto(m: Mount) -> Any:
    return mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)


def mount_from_proto(m: Any) -> Mount:
    return Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))


def info_to_proto(info: Info) -> Any:
    return snapshots_pb2.Info(
        name=info.name,
        parent=info.parent,
        kind=info.kind.name,
        created_at=timestamp_to_proto(info.created_at),
        updated_at=timestamp_to_proto(info.updated_at),
        labels=dict(info.labels),
    )


def info_from_proto(p: Any) -> Info:
    try:
        kind = Kind(p.kind)
    except ValueError:
        kind = Kind.UNKNOWN
    return Info(
        name=p.name,
        parent=p.parent,
        kind=kind,
        labels=dict(p.labels),
        created_at=timestamp_from_proto(p.created_at),
        updated_at=timestamp_from_proto(p.updated_at),
    )


def mounts_to_proto(mounts: Sequence[Mount]) -> list[Any]:
    return [mount_to_proto(m) for m in mounts]


def socket_path(address: str) -> Path:
    """The filesystem path of a ``unix:<path>`` (or bare path) gRPC address."""
    path = address.removeprefix("unix://").removeprefix("unix:")
    if not path:
        raise FailedPrecondition(f"grpc address {address!r}: no socket path")
    return Path(path)


__all__ = ["ERRORS_BY_CODE", "ERROR_CODES", "NAMESPACE_HEADER", "error_for", "info_from_proto",
           "info_to_proto", "mount_from_proto", "mount_to_proto", "mounts_to_proto",
           "socket_path", "status_for", "timestamp_from_proto", "timestamp_to_proto"]
