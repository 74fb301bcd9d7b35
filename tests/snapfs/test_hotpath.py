"""The hot path against the real registry, FUSE and overlayfs: once a lazy layer is fully
fetched it is materialised, and later mounts are plain kernel overlays with no FUSE lowerdir,
showing the same files; mounts made before keep working through the switch; a restart uses
the materialised directories; removing the snapshots releases everything but the chunks.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from snapfs.lazy.layers import LazyLayers, layer_id
from snapfs.lazy.profile import LocalRecording
from snapfs.lazy.schedule import FetchOptions
from snapfs.snapshot.mounting import mount_all
from snapfs.snapshot.types import Snapshots
from snapfs.sys import mountinfo
from snapfs.sys.mountops import unmount
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_lazy_pull import (
    big_so,
    lazy_puller,
    need_lazy,
    push_image,
    read_file,
    tree,
)

# The kernel sends these late, for handles and inodes of earlier accesses; they say nothing
# about whether the new mount reads through FUSE.
_HOUSEKEEPING = frozenset({"release", "releasedir", "forget"})


def served(lazy: LazyLayers, layer: str) -> int:
    """FUSE requests answered for ``layer``, kernel housekeeping aside."""
    return sum(n for op, n in lazy.fs.stats(layer).requests.items() if op not in _HOUSEKEEPING)


@asynccontextmanager
async def active_mount(sn: Snapshots, key: str, parent: str, target: Path) -> AsyncIterator[Path]:
    """A container's rootfs: an active snapshot's overlay, mounted."""
    target.mkdir(parents=True, exist_ok=True)
    await mount_all(await sn.prepare(key, parent), target)
    try:
        yield target
    finally:
        with trio.CancelScope(shield=True):
            await unmount(target)


def overlay_lowers(target: Path) -> list[str]:
    """The lowerdirs of the overlay mounted on ``target`` (/proc/self/mountinfo)."""
    for entry in mountinfo.read():
        if entry.mount_point == str(target):
            assert entry.fstype == "overlay", entry
            for opt in entry.super_options.split(","):
                if opt.startswith("lowerdir="):
                    return mountinfo.unescape(opt[len("lowerdir="):]).split(":")
    raise AssertionError(f"no overlay mounted on {target}")


async def wait_all_local(lazy: LazyLayers) -> None:
    with trio.fail_after(120):
        while not all(s.state == "local" for s in lazy.layer_status()):
            await trio.sleep(0.05)


async def test_background_fetch_switches_new_mounts_to_plain_overlay(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    ids = [layer_id(x.digest) for x in layers]
    async with lazy_puller(root, FetchOptions(background=True)) as (p, lazy, sn):
        result = await p.pull(pushed.ref)
        top = str(result.record.chain_ids[-1])
        await wait_all_local(lazy)
        status = {s.layer_id: s for s in lazy.layer_status()}
        for i, layer in zip(ids, layers, strict=True):
            assert status[i].path == str(root / "layers" / i)
            assert status[i].local_bytes == status[i].total_bytes > 0
            assert status[i].stats.background_requests >= 1
            assert status[i].digest == str(layer.digest)
        # Nothing mounts the FUSE directories: they go (each materialisation sweeps too).
        await lazy.sweep(grace=0)
        assert lazy.fs.layer_ids() == []
        async with active_mount(sn, "c1", top, tmp_path / "c1") as merged:
            lowers = overlay_lowers(merged)
            assert lowers == [str(root / "layers" / i) for i in reversed(ids)]
            assert not any("/fuse/" in x for x in lowers)
            assert await read_file(merged / "usr/lib/big.so") == big_so(repo_name)
            hot = await trio.to_thread.run_sync(tree, merged)
    # The native tree of the same image, for "identical to before".
    async with lazy_puller(tmp_path / "native", FetchOptions(background=False)) as (p, lazy, sn):
        result = await p.pull(pushed.ref)
        top = str(result.record.chain_ids[-1])
        async with active_mount(sn, "c1", top, tmp_path / "c2") as merged:
            assert any("/fuse/" in x for x in overlay_lowers(merged))
            assert await trio.to_thread.run_sync(tree, merged) == hot
    # A restart: materialised layers come back without FUSE (no mount at all).
    async with lazy_puller(root, FetchOptions(background=True)) as (p, lazy, sn):
        assert lazy.fs.layer_ids() == [] and not lazy.fs.mountpoint.is_mount()
        assert {s.state for s in lazy.layer_status()} == {"local"}
        async with active_mount(sn, "c3", top, tmp_path / "c3") as merged:
            assert not any("/fuse/" in x for x in overlay_lowers(merged))
            assert await trio.to_thread.run_sync(tree, merged) == hot
        # containerd's GC: children first. The last snapshot of a layer releases it.
        await sn.remove("c1")
        await sn.remove("c3")
        await sn.remove(top)
        assert (root / "layers" / ids[0]).is_dir()  # the bottom layer still has a snapshot
        assert not (root / "layers" / ids[1]).exists()
        await sn.remove(str(result.record.chain_ids[0]))
        assert lazy.layer_status() == [] and lazy.db.all() == []
        assert not (root / "layers" / ids[0]).exists()
        assert any((root / "chunks").iterdir())  # the cache is shared: chunks stay


async def test_readers_keep_working_through_the_switch(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    ids = [layer_id(x.digest) for x in layers]
    expected_big = big_so(repo_name)
    async with lazy_puller(root, FetchOptions(background=False)) as (p, lazy, sn):
        result = await p.pull(pushed.ref)
        top = str(result.record.chain_ids[-1])
        async with active_mount(sn, "c1", top, tmp_path / "c1") as old:
            assert all("/fuse/" in x for x in overlay_lowers(old))
            before = await trio.to_thread.run_sync(tree, old)
            stop, errors, rounds = threading.Event(), [], [0]

            def reader() -> None:
                # A container reading while its layers are materialised under it.
                while not stop.is_set():
                    try:
                        for path in ("usr/lib/big.so", "etc/passwd", "opt/shared.bin"):
                            (old / path).read_bytes()
                        if (old / "usr/lib/big.so").read_bytes() != expected_big:
                            errors.append("big.so changed")
                        rounds[0] += 1
                    except OSError as exc:
                        errors.append(repr(exc))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: trio.to_thread.run_sync(reader))
                for i in ids:
                    await lazy.make_local(i)
                # Still in use by the old overlay: the FUSE directories stay.
                await lazy.sweep(grace=0)
                assert lazy.fs.layer_ids() == sorted(ids)
                with trio.fail_after(60):
                    seen = rounds[0]
                    while rounds[0] < seen + 2:
                        await trio.sleep(0.05)
                stop.set()
            assert errors == []
            assert await trio.to_thread.run_sync(tree, old) == before

            # A new container of the image: plain overlay, same files, no FUSE request.
            requests = {i: served(lazy, i) for i in ids}
            async with active_mount(sn, "c2", top, tmp_path / "c2") as new:
                assert not any("/fuse/" in x for x in overlay_lowers(new))
                assert await read_file(new / "usr/lib/big.so") == expected_big
                assert await trio.to_thread.run_sync(tree, new) == before
            assert {i: served(lazy, i) for i in ids} == requests
        # The old overlay is gone: nothing uses the FUSE directories any more.
        await lazy.sweep(grace=0)
        assert lazy.fs.layer_ids() == []


async def test_a_recording_sees_materialised_layers_through_fuse_again(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    """``--record-profile`` on an image the background fetch already made local: while the
    recording holds them, new mounts use the layers' FUSE directories (re-added from their
    records, after a restart with no FUSE mount at all), so the reads are recorded; after it,
    mounts are plain overlays again and the FUSE directories go once unused."""
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    ids = [layer_id(x.digest) for x in layers]
    async with lazy_puller(root, FetchOptions(background=True)) as (p, lazy, sn):
        top = str((await p.pull(pushed.ref)).record.chain_ids[-1])
        await wait_all_local(lazy)
    async with lazy_puller(root, FetchOptions(background=True)) as (p, lazy, sn):
        assert lazy.fs.layer_ids() == []  # a restart: all local, no FUSE
        recording = await LocalRecording.start(lazy, ids)
        try:
            async with active_mount(sn, "c1", top, tmp_path / "c1") as merged:
                assert overlay_lowers(merged) == [str(root / "fuse" / i) for i in reversed(ids)]
                assert await read_file(merged / "usr/lib/big.so") == big_so(repo_name)
                assert "usr/lib/big.so" in await recording.stop()
                assert lazy.layer_status()[0].state == "local"
                async with active_mount(sn, "c2", top, tmp_path / "c2") as after:
                    assert not any("/fuse/" in x for x in overlay_lowers(after))
        finally:
            await recording.aclose()
        await lazy.sweep(grace=0)
        assert lazy.fs.layer_ids() == []


async def test_a_recording_holds_fuse_only_until_its_container_mounted(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    """The daemon's recordings (``nursery`` given): once the recorded container's overlay
    uses the FUSE directories, the hold ends, so that a container started while it still
    records gets plain directories (the hot path); the first one's reads are still
    recorded, through the FUSE directories its overlay keeps."""
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    ids = [layer_id(x.digest) for x in layers]
    async with lazy_puller(root, FetchOptions(background=True)) as (p, lazy, sn):
        top = str((await p.pull(pushed.ref)).record.chain_ids[-1])
        await wait_all_local(lazy)
        async with trio.open_nursery() as nursery:
            recording = await LocalRecording.start(lazy, ids, nursery=nursery)
            try:
                async with active_mount(sn, "c1", top, tmp_path / "c1") as first:
                    assert overlay_lowers(first) == [str(root / "fuse" / i)
                                                     for i in reversed(ids)]
                    with trio.fail_after(30):
                        while any(r.held for r in lazy.table.live_rows()):
                            await trio.sleep(0.05)
                    async with active_mount(sn, "c2", top, tmp_path / "c2") as second:
                        assert not any("/fuse/" in x for x in overlay_lowers(second))
                        assert await read_file(second / "usr/lib/big.so") == big_so(repo_name)
                    assert await read_file(first / "usr/lib/big.so") == big_so(repo_name)
                    assert "usr/lib/big.so" in await recording.stop()
            finally:
                await recording.aclose()
        await lazy.sweep(grace=0)
        assert lazy.fs.layer_ids() == []
