"""``SnapshotsClient``: the ``Snapshots`` protocol over snapfs's (or any) snapshots socket.

grpc.aio runs its own asyncio loop and cannot be awaited from trio, so each call uses
grpcio's synchronous stub: the call is started as a future and waited on in a worker thread.
If the trio caller is cancelled, the gRPC call is cancelled too, so no thread is left waiting
on it. Status codes map back to snapfs's errors through snapfs.daemon.snapshots_service's one table.

Must not hold snapshot logic: each method is one RPC, its errors mapped back by
``snapfs.api.wire``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import trio
from google.protobuf import field_mask_pb2

from snapfs.api import SnapshotsStub, snapshots_pb2
from snapfs.api.wire import (
    NAMESPACE_HEADER,
    error_for,
    info_from_proto,
    info_to_proto,
    mount_from_proto,
    socket_path,
)
from snapfs.errors import ContentError
from snapfs.snapshot.scoped import CLIENT_SCOPE
from snapfs.snapshot.types import Info, Mount, Usage

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "snapfs"


class SnapshotsClient:
    """A ``snapfs.snapshot.types.Snapshots`` speaking containerd's snapshots gRPC API.

    ``snapshotter`` names this client in every request, as containerd's proxy names itself:
    the daemon shows and lets it remove only the snapshots it holds (snapfs's commands use
    ``CLIENT_SCOPE``; pass containerd's plugin name to act as containerd would). It owns
    ``channel`` and closes it in ``aclose``."""

    def __init__(
        self, channel: grpc.Channel, *, address: str = "", namespace: str = DEFAULT_NAMESPACE,
        snapshotter: str = CLIENT_SCOPE,
    ) -> None:
        self._channel = channel
        self._stub = SnapshotsStub(channel)
        self._address = address
        self._metadata = ((NAMESPACE_HEADER, namespace),)
        self._snapshotter = snapshotter

    def _raise(self, method: str, err: grpc.RpcError) -> ContentError:
        code: grpc.StatusCode = err.code()
        details = err.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE:
            details = f"snapshots service at {self._address}: {details}"
        return error_for(code, details)

    async def _unary(self, method: str, request: Any) -> Any:
        future = getattr(self._stub, method).future(request, metadata=self._metadata)
        try:
            return await trio.to_thread.run_sync(_result, future, abandon_on_cancel=True)
        except grpc.RpcError as err:
            raise self._raise(method, err) from None
        except trio.Cancelled:
            future.cancel()
            raise

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        req = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self._snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        resp = await self._unary("Prepare", req)
        return [mount_from_proto(m) for m in resp.mounts]

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        req = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self._snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        resp = await self._unary("View", req)
        return [mount_from_proto(m) for m in resp.mounts]

    async def mounts(self, key: str) -> list[Mount]:
        req = snapshots_pb2.MountsRequest(snapshotter=self._snapshotter, key=key)
        resp = await self._unary("Mounts", req)
        return [mount_from_proto(m) for m in resp.mounts]

    async def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None:
        req = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self._snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self._unary("Commit", req)

    async def remove(self, key: str) -> None:
        req = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self._snapshotter, key=key)
        await self._unary("Remove", req)

    async def stat(self, key: str) -> Info:
        req = snapshots_pb2.StatSnapshotRequest(snapshotter=self._snapshotter, key=key)
        resp = await self._unary("Stat", req)
        return info_from_proto(resp.info)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        req = snapshots_pb2.UpdateSnapshotRequest(
            snapshotter=self._snapshotter,
            info=info_to_proto(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        resp = await self._unary("Update", req)
        return info_from_proto(resp.info)

    async def list(self, filters: Sequence[str] = ()) -> list[Info]:
        req = snapshots_pb2.ListSnapshotsRequest(
            snapshotter=self._snapshotter, filters=list(filters)
        )
        stream = self._stub.List(req, metadata=self._metadata)

        def drain() -> list[Info]:
            return [info_from_proto(i) for resp in stream for i in resp.info]

        try:
            return await trio.to_thread.run_sync(drain, abandon_on_cancel=True)
        except grpc.RpcError as err:
            raise self._raise("List", err) from None
        except trio.Cancelled:
            stream.cancel()
            raise

    async def usage(self, key: str) -> Usage:
        req = snapshots_pb2.UsageRequest(snapshotter=self._snapshotter, key=key)
        resp = await self._unary("Usage", req)
        return Usage(size=resp.size, inodes=resp.inodes)

    async def cleanup(self) -> None:
        await self._unary("Cleanup", snapshots_pb2.CleanupRequest(snapshotter=self._snapshotter))

    async def aclose(self) -> None:
        """Close the channel (idempotent); calls made after this fail."""
        self._channel.close()


def _result(future: Any) -> Any:
    return future.result()


@asynccontextmanager
async def open_client(
    address: str, *, namespace: str = DEFAULT_NAMESPACE, snapshotter: str = CLIENT_SCOPE,
) -> AsyncIterator[SnapshotsClient]:
    """A client for the snapshots socket at ``address`` (``unix:<path>`` or a path).

    Connecting is lazy: a daemon that is not running shows as ``Unavailable`` on first call.
    """
    target = f"unix:{socket_path(address)}"
    client = SnapshotsClient(grpc.insecure_channel(target), address=target, namespace=namespace,
                             snapshotter=snapshotter)
    try:
        yield client
    finally:
        await client.aclose()
