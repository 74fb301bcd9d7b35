"""The gRPC Snapshots service: containerd's wire messages ↔ a ``Snapshots`` implementation.

Handlers run on grpcio's threads and reach the async snapshotter through a ``TrioPortal``.
Each request is served for the client its ``snapshotter`` field names (containerd's proxy
sends its plugin's name): clients sharing the daemon never see or remove each other's
snapshots (``snapfs.snapshot.scoped``).
The error table and the proto ↔ value-type conversions it shares with the client are in
``snapfs.api.wire``. Must not hold snapshot logic: each handler converts, calls, converts back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2

from snapfs.api import add_snapshots_servicer, snapshots_pb2
from snapfs.api.wire import (
    NAMESPACE_HEADER,
    info_from_proto,
    info_to_proto,
    mounts_to_proto,
    status_for,
)
from snapfs.daemon.grpc_server import TrioPortal
from snapfs.daemon.metrics import Metrics
from snapfs.errors import (
    ContentError,
    FailedPrecondition,
)
from snapfs.snapshot.scoped import for_client
from snapfs.snapshot.types import Info, Snapshots

log = logging.getLogger(__name__)

LIST_BATCH = 100  # Infos per ListSnapshotsResponse; keeps each message far below 4 MiB


# -- the servicer --------------------------------------------------------------------------

def _namespace(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_HEADER:
            return str(value)
    return ""


def _describe(request: Any) -> str:
    for field in ("key", "name"):
        value = getattr(request, field, "")
        if value:
            return f"{field}={value!r}"
    info = getattr(request, "info", None)
    return f"name={info.name!r}" if info is not None and info.name else ""


class SnapshotsServicer:
    """containerd.services.snapshots.v1.Snapshots over a ``Snapshots`` implementation."""

    def __init__(
        self, snapshots: Snapshots, portal: TrioPortal, metrics: Metrics | None = None
    ) -> None:
        self._sn = snapshots
        self._portal = portal
        self._metrics = metrics

    def add_to_server(self, server: grpc.Server) -> None:
        add_snapshots_servicer(self, server)

    def _for(self, request: Any) -> Snapshots:
        return for_client(self._sn, str(request.snapshotter))

    # Every handler passes through here: one place logs, times, and maps errors to codes.
    def _handle(self, method: str, request: Any, context: grpc.ServicerContext,
                body: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        log.debug("%s %s ns=%s client=%s", method, _describe(request), _namespace(context),
                  getattr(request, "snapshotter", ""))
        try:
            return body()
        except ContentError as exc:
            code = status_for(exc)
            log.info("%s %s: %s: %s", method, _describe(request), code.name, exc)
            context.abort(code, str(exc))
        except Exception as exc:
            code = grpc.StatusCode.UNKNOWN
            log.exception("%s %s: unexpected error", method, _describe(request))
            context.abort(code, f"snapfs: {method}: {type(exc).__name__}: {exc}")
        finally:
            if self._metrics is not None:
                self._metrics.observe_rpc(method, code.name, time.perf_counter() - start)

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            mounts = self._portal.run(
                self._for(request).prepare, request.key, request.parent, dict(request.labels)
            )
            return snapshots_pb2.PrepareSnapshotResponse(mounts=mounts_to_proto(mounts))

        return self._handle("Prepare", request, context, body)

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            mounts = self._portal.run(
                self._for(request).view, request.key, request.parent, dict(request.labels)
            )
            return snapshots_pb2.ViewSnapshotResponse(mounts=mounts_to_proto(mounts))

        return self._handle("View", request, context, body)

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            mounts = self._portal.run(self._for(request).mounts, request.key)
            return snapshots_pb2.MountsResponse(mounts=mounts_to_proto(mounts))

        return self._handle("Mounts", request, context, body)

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            if request.parent:
                self._check_parent(request, request.key, request.parent)
            self._portal.run(self._for(request).commit, request.name, request.key,
                             dict(request.labels))
            return empty_pb2.Empty()

        return self._handle("Commit", request, context, body)

    def _check_parent(self, request: Any, key: str, parent: str) -> None:
        # Newer containerd names the parent it expects the active snapshot to have.
        info: Info = self._portal.run(self._for(request).stat, key)
        if info.parent != parent:
            raise FailedPrecondition(
                f"snapshot {key!r}: commit expected parent {parent!r}, has {info.parent!r}"
            )

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            self._portal.run(self._for(request).remove, request.key)
            return empty_pb2.Empty()

        return self._handle("Remove", request, context, body)

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            info = self._portal.run(self._for(request).stat, request.key)
            return snapshots_pb2.StatSnapshotResponse(info=info_to_proto(info))

        return self._handle("Stat", request, context, body)

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            paths = tuple(request.update_mask.paths)
            info = self._portal.run(self._for(request).update, info_from_proto(request.info), paths)
            return snapshots_pb2.UpdateSnapshotResponse(info=info_to_proto(info))

        return self._handle("Update", request, context, body)

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # The whole listing is taken in one call (one consistent read), then streamed.
        infos: list[Info] = self._handle(
            "List", request, context,
            lambda: self._portal.run(self._for(request).list, tuple(request.filters)),
        )
        for batch in batched(infos, LIST_BATCH):
            yield snapshots_pb2.ListSnapshotsResponse(info=[info_to_proto(i) for i in batch])

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            usage = self._portal.run(self._for(request).usage, request.key)
            return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

        return self._handle("Usage", request, context, body)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            self._portal.run(self._sn.cleanup)
            return empty_pb2.Empty()

        return self._handle("Cleanup", request, context, body)


def batched(items: Sequence[Info], size: int) -> Iterator[Sequence[Info]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
