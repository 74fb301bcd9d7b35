"""The gRPC Snapshots service through a real unix socket, against an in-memory Snapshots.

``MemorySnapshots`` here is a tiny implementation of containerd's semantics (no directories;
mounts computed from names) so that the service, client, error table and bridge are tested
on their own; test_daemon and the conformance suite cover the real snapshotter.
"""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from content.filters import parse_filters
from snapfs.api import SnapshotsStub, snapshots_pb2
from snapfs.api.wire import error_for, status_for
from snapfs.client.snapshots import SnapshotsClient, open_client
from snapfs.daemon.grpc_server import TrioPortal, serve_grpc
from snapfs.daemon.metrics import Metrics
from snapfs.daemon.snapshots_service import LIST_BATCH, SnapshotsServicer
from snapfs.errors import (
    AlreadyExists,
    DigestMismatch,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from snapfs.snapshot.types import Info, Kind, Mount, Usage


class MemorySnapshots:
    def __init__(self) -> None:
        self.infos: dict[str, Info] = {}
        self.gate: trio.Event | None = None  # when set, stat() waits on it (in-flight tests)
        self.entered = trio.Event()
        self.closed = False

    def _get(self, key: str) -> Info:
        try:
            return self.infos[key]
        except KeyError:
            raise NotFound(f"snapshot {key!r} not found") from None

    def _mounts(self, info: Info) -> list[Mount]:
        if not info.parent:
            rw = "ro" if info.kind is Kind.VIEW else "rw"
            return [Mount("bind", f"/mem/{info.name}", options=(rw, "rbind"))]
        chain = []
        p = info.parent
        while p:
            chain.append(f"/mem/{p}")
            p = self.infos[p].parent
        return [Mount("overlay", "overlay", options=(
            "lowerdir=" + ":".join(chain), f"upperdir=/mem/{info.name}/fs",
        ))]

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        if not key:
            raise InvalidArgument("snapshot key is empty")
        if key in self.infos:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        if parent and self._get(parent).kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"parent {parent!r} is not committed")
        now = time.time()
        info = Info(key, parent, kind, dict(labels or {}), now, now)
        self.infos[key] = info
        return self._mounts(info)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def mounts(self, key: str) -> list[Mount]:
        return self._mounts(self._get(key))

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        info = self._get(key)
        if info.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active")
        if name in self.infos:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        del self.infos[key]
        self.infos[name] = replace(
            info, name=name, kind=Kind.COMMITTED, labels=dict(labels or info.labels)
        )

    async def remove(self, key: str) -> None:
        self._get(key)
        if any(i.parent == key for i in self.infos.values()):
            raise FailedPrecondition(f"snapshot {key!r} has children")
        del self.infos[key]

    async def stat(self, key: str) -> Info:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if key == "boom":
            raise RuntimeError("unexpected bug")
        if key == "internal":
            raise Internal("metastore corrupt")
        return self._get(key)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        old = self._get(info.name)
        labels = dict(old.labels)
        if not fieldpaths or "labels" in fieldpaths:
            labels = dict(info.labels)
        else:
            for path in fieldpaths:
                if not path.startswith("labels."):
                    raise InvalidArgument(f"cannot update {path!r}")
                k = path.removeprefix("labels.")
                if k in info.labels:
                    labels[k] = info.labels[k]
                else:
                    labels.pop(k, None)
        new = replace(old, labels=labels, updated_at=time.time())
        self.infos[info.name] = new
        return new

    async def list(self, filters: Sequence[str] = ()) -> list[Info]:
        flt = parse_filters(filters)

        def lookup_in(info: Info) -> Callable[[Sequence[str]], str | None]:
            def lookup(path: Sequence[str]) -> str | None:
                if path[0] == "labels" and len(path) == 2:
                    return info.labels.get(path[1])
                if path[0] in ("name", "parent"):
                    return str(getattr(info, path[0]))
                if path[0] == "kind":
                    return info.kind.name.lower()
                return None

            return lookup

        return [i for i in self.infos.values() if flt.match(lookup_in(i))]

    async def usage(self, key: str) -> Usage:
        self._get(key)
        return Usage(size=4096, inodes=3)

    async def cleanup(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class Served:
    mem: MemorySnapshots
    client: SnapshotsClient
    socket: Path
    metrics: Metrics

    def stub(self) -> Any:
        return SnapshotsStub(grpc.insecure_channel(f"unix:{self.socket}"))


@pytest.fixture
async def served(sock_dir: Path) -> AsyncIterator[Served]:
    mem = MemorySnapshots()
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        portal = TrioPortal()
        servicer = SnapshotsServicer(mem, portal, metrics)
        sock = await nursery.start(
            partial(serve_grpc, servicer, str(sock_dir / "s.sock"), portal=portal)
        )
        async with open_client(str(sock)) as client:
            yield Served(mem, client, sock, metrics)
        nursery.cancel_scope.cancel()


def call(stub_method: Any, request: Any, **kw: Any) -> Any:
    """A raw gRPC call (as containerd makes it): returns the response or the status code."""
    try:
        return stub_method(request, metadata=(("containerd-namespace", "test"),), **kw)
    except grpc.RpcError as err:
        return err.code()


# -- tests ---------------------------------------------------------------------------------


def test_error_table_round_trips_every_category() -> None:
    for exc in (NotFound("x"), AlreadyExists("x"), FailedPrecondition("x"),
                InvalidArgument("x"), Unavailable("x"), Unauthorized("x"), Internal("x")):
        back = error_for(status_for(exc), "x")
        assert type(back) is type(exc)
    assert status_for(DigestMismatch("blob", "sha256:a", "sha256:b")) is \
        grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(ValueError("bug")) is grpc.StatusCode.UNKNOWN
    assert isinstance(error_for(grpc.StatusCode.UNKNOWN, "bug"), Internal)


async def test_every_rpc_through_the_socket(served: Served) -> None:
    c = served.client
    mounts = await c.prepare("base", labels={"containerd.io/snapshot/a": "1"})
    assert mounts == [Mount("bind", "/mem/base", options=("rw", "rbind"))]
    assert await c.mounts("base") == mounts
    await c.commit("base-c", "base", labels={"containerd.io/snapshot/a": "2"})
    child = await c.prepare("child", "base-c")
    assert child[0].type == "overlay" and "lowerdir=/mem/base-c" in child[0].options
    view = await c.view("v", "base-c")
    assert view == served.mem._mounts(served.mem.infos["v"])

    info = await c.stat("base-c")
    mem_info = served.mem.infos["base-c"]
    assert (info.name, info.parent, info.kind) == ("base-c", "", Kind.COMMITTED)
    assert info.labels == {"containerd.io/snapshot/a": "2"}
    assert abs(info.created_at - mem_info.created_at) < 1e-6
    assert (await c.stat("child")).parent == "base-c"
    assert (await c.stat("v")).kind is Kind.VIEW

    updated = await c.update(
        Info("base-c", labels={"containerd.io/snapshot/b": "x"}),
        ("labels.containerd.io/snapshot/b",),
    )
    assert updated.labels == {"containerd.io/snapshot/a": "2", "containerd.io/snapshot/b": "x"}
    replaced = await c.update(Info("base-c", labels={"only": "this"}))
    assert replaced.labels == {"only": "this"}

    names = {i.name for i in await c.list()}
    assert names == {"base-c", "child", "v"}
    assert [i.name for i in await c.list(['parent=="base-c",kind==view'])] == ["v"]
    assert {i.name for i in await c.list(["kind==view", "name==child"])} == {"v", "child"}

    assert await c.usage("child") == Usage(size=4096, inodes=3)
    await c.remove("v")
    await c.remove("child")
    await c.remove("base-c")
    await c.cleanup()
    assert await c.list() == []


async def test_errors_reach_the_client_as_the_same_categories(served: Served) -> None:
    c = served.client
    with pytest.raises(NotFound, match="'nope' not found"):
        await c.stat("nope")
    await c.prepare("a")
    with pytest.raises(AlreadyExists, match="'a' already exists"):
        await c.prepare("a")
    with pytest.raises(FailedPrecondition, match="not committed"):
        await c.prepare("b", "a")
    with pytest.raises(InvalidArgument, match="empty"):
        await c.prepare("")
    await c.commit("a-c", "a")
    await c.prepare("b", "a-c")
    with pytest.raises(FailedPrecondition, match="children"):
        await c.remove("a-c")
    with pytest.raises(Internal, match="metastore corrupt"):
        await c.stat("internal")
    with pytest.raises(Internal, match="RuntimeError: unexpected bug"):
        await c.stat("boom")
    with pytest.raises(InvalidArgument):
        await c.list(["labels.x~=/(/"])  # a bad regexp



async def test_wire_status_codes_are_containerds(served: Served) -> None:
    await served.mem.prepare("a")
    stub = served.stub()
    codes = await trio.to_thread.run_sync(lambda: [
        call(stub.Stat, snapshots_pb2.StatSnapshotRequest(key="missing")),
        call(stub.Prepare, snapshots_pb2.PrepareSnapshotRequest(key="a")),
        call(stub.Prepare, snapshots_pb2.PrepareSnapshotRequest(key="c", parent="a")),
        call(stub.Prepare, snapshots_pb2.PrepareSnapshotRequest(key="")),
        call(stub.Stat, snapshots_pb2.StatSnapshotRequest(key="boom")),
        call(stub.Stat, snapshots_pb2.StatSnapshotRequest(key="internal")),
    ])
    assert codes == [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    ]


async def test_commit_accepts_the_parent_field(served: Served) -> None:
    await served.mem.prepare("base")
    await served.mem.commit("base-c", "base")
    await served.mem.prepare("a", "base-c")
    await served.mem.prepare("b", "base-c")
    stub = served.stub()
    wrong, right = await trio.to_thread.run_sync(lambda: [
        call(stub.Commit, snapshots_pb2.CommitSnapshotRequest(name="a-c", key="a", parent="x")),
        call(stub.Commit, snapshots_pb2.CommitSnapshotRequest(name="b-c", key="b",
                                                               parent="base-c")),
    ])
    assert wrong is grpc.StatusCode.FAILED_PRECONDITION
    assert not isinstance(right, grpc.StatusCode)
    assert served.mem.infos["b-c"].kind is Kind.COMMITTED
    assert served.mem.infos["a"].kind is Kind.ACTIVE


async def test_list_streams_in_batches(served: Served) -> None:
    for i in range(LIST_BATCH * 2 + 50):
        await served.mem.prepare(f"s{i:04d}", labels={"containerd.io/snapshot/n": str(i)})
    stub = served.stub()
    sizes = await trio.to_thread.run_sync(
        lambda: [len(r.info) for r in stub.List(snapshots_pb2.ListSnapshotsRequest())]
    )
    assert sizes == [LIST_BATCH, LIST_BATCH, 50]
    infos = await served.client.list()
    assert len(infos) == LIST_BATCH * 2 + 50
    assert {i.labels["containerd.io/snapshot/n"] for i in infos} == {
        str(i) for i in range(LIST_BATCH * 2 + 50)
    }


async def test_remote_snapshot_list_filter_over_the_wire(served: Served) -> None:
    ref = "containerd.io/snapshot.ref"
    await served.mem.prepare("l1", labels={ref: "sha256:abc"})
    await served.mem.commit("sha256:abc", "l1", labels={ref: "sha256:abc"})
    got = await served.client.list([f'labels."{ref}"==sha256:abc,parent==""'])
    assert [i.name for i in got] == ["sha256:abc"]
    assert await served.client.list([f'labels."{ref}"==sha256:abc,parent=="x"']) == []


async def test_unreachable_socket_is_unavailable(sock_dir: Path) -> None:
    async with open_client(str(sock_dir / "none.sock")) as client:
        with pytest.raises(Unavailable, match=r"none\.sock"):
            await client.stat("x")


async def test_in_flight_call_finishes_on_graceful_stop(sock_dir: Path) -> None:
    mem = MemorySnapshots()
    mem.gate = trio.Event()
    await mem.prepare("a")
    results: list[Info] = []

    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[Path]) -> None:
            with server_scope:
                portal = TrioPortal()
                await serve_grpc(SnapshotsServicer(mem, portal), str(sock_dir / "s.sock"),
                                 portal=portal, task_status=task_status)

        sock: Path = await outer.start(run_server)
        async with open_client(str(sock)) as client:

            async def stat_a() -> None:
                results.append(await client.stat("a"))

            async with trio.open_nursery() as calls:
                calls.start_soon(stat_a)
                await mem.entered.wait()
                server_scope.cancel()  # the server now drains: new calls are refused
                async with open_client(str(sock)) as late:
                    while True:
                        try:
                            await late.list()
                        except Unavailable:
                            break
                        await trio.sleep(0.01)
                mem.gate.set()
    assert [i.name for i in results] == ["a"]
    assert not sock.exists()


async def test_socket_is_0660_and_a_stale_one_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a killed daemon leaves it
    mem = MemorySnapshots()
    async with trio.open_nursery() as nursery:
        portal = TrioPortal()
        await nursery.start(serve_grpc, SnapshotsServicer(mem, portal), str(path))
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        async with open_client(str(path)) as client:
            assert await client.list() == []
        # A second server must not steal a live socket.
        with pytest.raises(FailedPrecondition, match="another server"):
            await serve_grpc(SnapshotsServicer(mem, portal), str(path))
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_refuses_to_replace_a_non_socket(sock_dir: Path) -> None:
    path = sock_dir / "file"
    path.write_text("not a socket")
    mem = MemorySnapshots()
    with pytest.raises(FailedPrecondition, match="not a socket"):
        await serve_grpc(SnapshotsServicer(mem, TrioPortal()), str(path))
    assert path.read_text() == "not a socket"


async def test_rpcs_are_counted_by_method_and_code(served: Served) -> None:
    await served.client.prepare("a")
    with pytest.raises(NotFound):
        await served.client.stat("missing")
    reg = served.metrics.registry
    assert reg.get_sample_value(
        "snapfs_grpc_requests_total", {"method": "Prepare", "code": "OK"}) == 1
    assert reg.get_sample_value(
        "snapfs_grpc_errors_total", {"method": "Stat", "code": "NOT_FOUND"}) == 1
    assert reg.get_sample_value(
        "snapfs_grpc_request_duration_seconds_count", {"method": "Stat"}) == 1
