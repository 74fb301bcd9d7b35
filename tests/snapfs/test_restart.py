"""A daemon killed with SIGKILL (even mid-Prepare) and started again loses nothing it answered.

Every committed, active and view snapshot is still there; Stat, List and Mounts agree with
each other and with what was answered before the kill; after Cleanup no half-made ``new-*``
(or ``rm-*``) directory remains and every directory under snapshots/ belongs to a snapshot.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import trio

from snapfs.client.snapshots import SnapshotsClient
from snapfs.errors import ContentError
from snapfs.snapshot.mounting import mount_all
from snapfs.snapshot.types import Info, Kind, Mount
from snapfs.sys.mountops import unmount_all
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.realenv import need_root

LAYERS = 3


def upper_of(mounts: list[Mount]) -> Path:
    """The directory a writer fills: a bind's source, or an overlay's upperdir."""
    (m,) = mounts
    if m.type == "bind":
        return Path(m.source)
    for opt in m.options:
        if opt.startswith("upperdir="):
            return Path(opt.removeprefix("upperdir="))
    raise AssertionError(f"no writable dir in {m}")


async def build_chain(c: SnapshotsClient) -> None:
    """layer0..2 committed (one file each), 'work' active on top with a file, 'ro' a view."""
    parent = ""
    for i in range(LAYERS):
        mounts = await c.prepare(f"layer{i}-extract", parent)
        (upper_of(mounts) / f"file{i}").write_text(f"layer {i}\n")
        await c.commit(f"layer{i}", f"layer{i}-extract",
                       labels={"containerd.io/snapshot/n": str(i)})
        parent = f"layer{i}"
    (upper_of(await c.prepare("work", parent)) / "mine").write_text("active\n")
    await c.view("ro", parent)
    await c.update(Info("work", labels={"containerd.io/snapshot/x": "y"}))


async def kill_during_prepares(daemon: SnapfsDaemon, c: SnapshotsClient) -> list[str]:
    """Prepare snapshots back to back and SIGKILL the daemon while they run."""
    answered: list[str] = []
    ended = trio.Event()

    async def burst() -> None:
        i = 0
        try:
            while True:
                await c.prepare(f"burst{i}", "layer0")
                answered.append(f"burst{i}")
                i += 1
        except ContentError:
            pass  # the daemon died under this call
        finally:
            ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(burst)
        while len(answered) < 5 and not ended.is_set():
            await trio.sleep(0.005)
        assert not ended.is_set(), f"prepare failed before the kill, after {answered}"
        os.kill(daemon.pid, signal.SIGKILL)
    return answered


async def test_sigkill_then_restart_keeps_every_snapshot(snapfs_daemon: SnapfsDaemon) -> None:
    async with snapfs_daemon.client() as c:
        await build_chain(c)
        before = {i.name: i for i in await c.list()}
        mounts_before = {n: await c.mounts(n) for n, i in before.items()
                         if i.kind is not Kind.COMMITTED}
        answered = await kill_during_prepares(snapfs_daemon, c)
    await snapfs_daemon.stop()  # reaps the killed process
    await snapfs_daemon.start()

    async with snapfs_daemon.client() as c:
        after = {i.name: i for i in await c.list()}
        assert set(before) | set(answered) <= set(after)
        for name, info in before.items():
            assert after[name] == info, name
        for name, info in after.items():
            assert await c.stat(name) == info  # Stat agrees with List
        for name, mounts in mounts_before.items():
            assert await c.mounts(name) == mounts, name
        for name in answered:
            assert (await c.stat(name)).kind is Kind.ACTIVE
            assert upper_of(await c.mounts(name)).is_dir()
        assert after["work"].labels == {"containerd.io/snapshot/x": "y"}

        await c.cleanup()
        left = sorted(p.name for p in (snapfs_daemon.root / "snapshots").iterdir())
        assert not [n for n in left if n.startswith(("new-", "rm-"))], left
        assert len(left) == len(await c.list())


async def test_after_sigkill_the_active_snapshot_still_mounts_every_layer(
    snapfs_daemon: SnapfsDaemon,
) -> None:
    need_root("root, to mount overlayfs")
    async with snapfs_daemon.client() as c:
        await build_chain(c)
    await snapfs_daemon.restart(kill=True)
    target = Path(tempfile.mkdtemp(prefix="snapfs-mnt", dir=snapfs_daemon.root))
    async with snapfs_daemon.client() as c:
        await mount_all(await c.mounts("work"), target)
        try:
            names = sorted(p.name for p in target.iterdir())
            assert names == ["file0", "file1", "file2", "mine"]
            assert (target / "file1").read_text() == "layer 1\n"
            (target / "new").write_text("after restart\n")
        finally:
            with trio.CancelScope(shield=True):
                await unmount_all(target)
        await mount_all(await c.mounts("ro"), target)
        try:
            assert sorted(p.name for p in target.iterdir()) == ["file0", "file1", "file2"]
        finally:
            with trio.CancelScope(shield=True):
                await unmount_all(target)
