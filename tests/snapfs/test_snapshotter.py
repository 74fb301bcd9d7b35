"""Snapshotter behaviour beyond the conformance suite: persistence, crash safety, cleanup,
usage, and the lazy-layer seam. Metadata-only: the bind source is written directly."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from snapfs.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from snapfs.snapshot.labels import LABEL_SNAPSHOT_REF
from snapfs.snapshot.remote import RemoteLayer
from snapfs.snapshot.scoped import ScopedSnapshots
from snapfs.snapshot.snapshotter import Snapshotter, open_snapshotter
from snapfs.snapshot.types import Kind, Usage


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "snapshots").iterdir())


async def test_state_survives_reopen(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    (m,) = await sn.prepare("base-a", "", {"a": "1"})
    (Path(m.source) / "hello").write_text("hi")
    await sn.commit("base", "base-a", {"b": "2"})
    await sn.prepare("top", "base")
    before = await sn.list()
    mounts = await sn.mounts("top")
    sn.close()

    sn = Snapshotter.open(tmp_path)
    try:
        assert await sn.list() == before
        assert await sn.mounts("top") == mounts
        assert (await sn.stat("base")).labels == {"b": "2"}
        assert await sn.usage("base") == Usage(size=2, inodes=2)
    finally:
        sn.close()


async def test_failed_prepare_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sn = Snapshotter.open(tmp_path)
    try:
        with pytest.raises(NotFound, match="parent snapshot missing not found"):
            await sn.prepare("k", "missing")
        assert entries(tmp_path) == []

        def failing_rename(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device (simulated)")

        with monkeypatch.context() as mp:
            mp.setattr(os, "rename", failing_rename)
            with pytest.raises(OSError, match="simulated"):
                await sn.prepare("k")
        assert entries(tmp_path) == []
        with pytest.raises(NotFound):
            await sn.stat("k")  # the transaction was aborted too
        await sn.prepare("k")
        assert entries(tmp_path) == [str(await _id_dir(sn, "k"))]
    finally:
        sn.close()


async def _id_dir(sn: Snapshotter, key: str) -> str:
    (m,) = await sn.mounts(key)
    return Path(m.source).parent.name


async def test_remove_and_cleanup_delete_directories(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    try:
        await sn.prepare("a")
        await sn.prepare("b")
        a_dir = await _id_dir(sn, "a")
        await sn.remove("a")
        assert a_dir not in entries(tmp_path)
        b_dir = await _id_dir(sn, "b")
        # What a crash could leave: a half-made snapshot and an unfinished removal.
        proc = subprocess.Popen(["true"])
        proc.wait()
        (tmp_path / "snapshots" / f"new-{proc.pid}-x").mkdir()  # a dead process's
        (tmp_path / "snapshots" / "new-123").mkdir()  # an older snapfs's (no pid)
        (tmp_path / "snapshots" / "rm-7" / "fs").mkdir(parents=True)
        (tmp_path / "snapshots" / "999").mkdir()
        live = tmp_path / "snapshots" / f"new-{os.getpid()}-y"  # a Prepare in flight
        live.mkdir()
        await sn.cleanup()
        assert entries(tmp_path) == sorted([b_dir, live.name])
        live.rmdir()
        with pytest.raises(NotFound, match="snapshot a not found"):
            await sn.remove("a")
    finally:
        sn.close()


async def test_open_sweeps_what_killed_processes_left(tmp_path: Path) -> None:
    async with open_snapshotter(tmp_path) as sn:
        await sn.prepare("a")
        a_dir = await _id_dir(sn, "a")
    proc = subprocess.Popen(["true"])  # its pid is free once it has been waited for
    proc.wait()
    snaps = tmp_path / "snapshots"
    (snaps / "rm-7" / "fs").mkdir(parents=True)  # a removal cut short (committed)
    (snaps / f"new-{proc.pid}-abc" / "fs").mkdir(parents=True)  # a killed Prepare's
    live = snaps / f"new-{os.getpid()}-xyz"  # a live process preparing right now: kept
    live.mkdir()
    async with open_snapshotter(tmp_path) as sn:
        assert sorted(entries(tmp_path)) == sorted([a_dir, live.name])
        await sn.prepare("b")  # and the snapshotter works as before
    live.rmdir()


async def test_usage_counts_hardlinks_once(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    try:
        (m,) = await sn.prepare("a")
        fs = Path(m.source)
        (fs / "f").write_bytes(b"x" * 1000)
        os.link(fs / "f", fs / "g")
        (fs / "d").mkdir()
        (fs / "d" / "s").symlink_to("../f")
        assert await sn.usage("a") == Usage(size=1000, inodes=4)  # root, f(=g), d, s
        await sn.commit("c", "a")
        (fs.parent.parent / "later").mkdir(exist_ok=True)  # not part of the snapshot
        assert await sn.usage("c") == Usage(size=1000, inodes=4)
        await sn.view("v", "c")
        assert await sn.usage("v") == Usage()
    finally:
        sn.close()


async def test_errors_name_the_snapshot(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    try:
        with pytest.raises(InvalidArgument, match="maximum size"):
            await sn.prepare("a", "", {"k": "v" * 4096})
        await sn.prepare("a", "", {"k": "v" * 4095})
        with pytest.raises(AlreadyExists, match="snapshot a already exists"):
            await sn.view("a")
        with pytest.raises(NotFound, match="snapshot nope not found"):
            await sn.mounts("nope")
        with pytest.raises(NotFound, match="snapshot nope not found"):
            await sn.commit("x", "nope")
    finally:
        sn.close()
    with pytest.raises(Unavailable, match="closed"):
        await sn.stat("a")


class FakeRemote:
    def __init__(self, lower: Path | None) -> None:
        self.lower = lower
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> RemoteLayer | None:
        self.calls.append((key, parent, dict(labels)))
        return None if self.lower is None else RemoteLayer(str(self.lower))


async def test_remote_layer_handshake(tmp_path: Path) -> None:
    lazy = tmp_path / "lazy-layer"
    lazy.mkdir()
    remote = FakeRemote(lazy)
    sn = Snapshotter.open(tmp_path / "root", remote=remote)
    try:
        labels = {LABEL_SNAPSHOT_REF: "sha256:chain1", "containerd.io/snapshot/x": "y"}
        with pytest.raises(AlreadyExists, match="sha256:chain1"):
            await sn.prepare("extract-1 sha256:chain1", "", labels)
        assert remote.calls == [("extract-1 sha256:chain1", "", labels)]
        found = await sn.list(
            ['labels."containerd.io/snapshot.ref"==sha256:chain1,parent==""']
        )
        assert [(i.name, i.kind, dict(i.labels)) for i in found] == [
            ("sha256:chain1", Kind.COMMITTED, labels)
        ]
        # A second Prepare for the same layer does not ask the remote again.
        with pytest.raises(AlreadyExists):
            await sn.prepare("extract-2 sha256:chain1", "", labels)
        assert len(remote.calls) == 1
        # Children stack on the lazy directory.
        (m,) = await sn.view("v", "sha256:chain1")
        assert (m.type, m.source) == ("bind", str(lazy))
        # The remote declines: containerd unpacks as usual.
        remote.lower = None
        mounts = await sn.prepare("extract-3", "sha256:chain1", {LABEL_SNAPSHOT_REF: "c2"})
        assert mounts[0].type == "overlay" and f"lowerdir={lazy}" in mounts[0].options
        assert (await sn.stat("extract-3")).kind == Kind.ACTIVE
    finally:
        sn.close()


async def test_without_remote_the_ref_label_is_ignored(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    try:
        await sn.prepare("k", "", {LABEL_SNAPSHOT_REF: "sha256:c"})
        assert (await sn.stat("k")).kind == Kind.ACTIVE
    finally:
        sn.close()


class GatedRemote(FakeRemote):
    """Offers ``lower``; a Prepare of a key in ``gates`` waits for its event first (another
    process's Prepare of the same layer, slower to index it)."""

    def __init__(self, lower: Path, gates: dict[str, trio.Event]) -> None:
        super().__init__(lower)
        self.gates = gates

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> RemoteLayer | None:
        if key in self.gates:
            await self.gates[key].wait()
        return await super().prepare_remote(key, parent, labels)


async def test_a_prepare_that_loses_the_commit_race_holds_the_winners_snapshot(
        tmp_path: Path) -> None:
    """Two clients prepare one lazy layer at once; the one whose remote answers second
    finds the chain committed in its transaction: it answers AlreadyExists *and* holds the
    snapshot, so the Stat that follows finds it (containerd's unpacker Stat()s next)."""
    lazy = tmp_path / "lazy-layer"
    lazy.mkdir()
    slow = trio.Event()
    sn = Snapshotter.open(tmp_path / "root", remote=GatedRemote(lazy, {"extract-b": slow}))
    a, b = sn.scoped("client-a"), sn.scoped("client-b")
    labels = {LABEL_SNAPSHOT_REF: "sha256:chain1"}
    answers: list[str] = []

    async def prepare(client: ScopedSnapshots, key: str) -> None:
        with pytest.raises(AlreadyExists):
            await client.prepare(key, "", labels)
        answers.append(key)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prepare, b, "extract-b")
            await trio.testing.wait_all_tasks_blocked()  # b found no chain; its remote waits
            await prepare(a, "extract-a")  # a commits first
            slow.set()
        assert answers == ["extract-a", "extract-b"]
        for client in (a, b):
            assert (await client.stat("sha256:chain1")).kind == Kind.COMMITTED
        assert [i.name for i in await sn.list()] == ["sha256:chain1"]
    finally:
        sn.close()


async def test_the_remotes_own_already_exists_is_not_the_handshake(tmp_path: Path) -> None:
    """AlreadyExists from a Prepare means "committed": one from the remote (its FUSE server
    already mounting the layer) must not reach the client as that."""

    class Busy(FakeRemote):
        async def prepare_remote(self, key: str, parent: str,
                                 labels: Mapping[str, str]) -> RemoteLayer | None:
            raise AlreadyExists("layer abc: already mounted")

    sn = Snapshotter.open(tmp_path, remote=Busy(None))
    try:
        with pytest.raises(Unavailable, match="already mounted"):
            await sn.prepare("extract-1", "", {LABEL_SNAPSHOT_REF: "sha256:chain1"})
        assert await sn.list() == []
    finally:
        sn.close()
