"""containerd's garbage collector and remote-snapshot handshake against snapfs.

containerd lists every backend snapshot and removes what its metadata no longer references,
children first, then calls Cleanup: snapfs's List must be complete and its parents truthful,
or snapshots (and their disk space) leak. containerd removes backend snapshots in its GC,
after ``ctr`` returns, so these tests poll snapfs's List (bounded by ``GC_LIMIT``).

The handshake is checked twice: with ``snapfs serve`` and a real eStargz layer (lazy through
FUSE), and in-process with a stand-in ``RemoteLayers``, which pins containerd's side of it
(Prepare → AlreadyExists → List filtered on ``snapshot.ref`` and ``parent``) without FUSE.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from content.compression import media_type_for
from content.estargz import build_estargz
from content.image import Layer
from content.tarlayer import Entry, build_tar, entries_from_dir
from snapfs.app.pull import chain_ids
from snapfs.config import Config, default_config, with_overrides
from snapfs.daemon.daemon import DaemonStatus, serve_daemon
from snapfs.snapshot.remote import RemoteLayer
from snapfs.snapshot.snapshotter import open_snapshotter
from snapfs.snapshot.types import Kind, Snapshots
from tests.fixtures.containerd import Containerd, ContainerdFactory, stop_containerd
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_containerd import (
    APP_LAYER,
    GC_LIMIT,
    SNAPSHOTTER,
    backend,
    ctr,
    ls_rows,
    push_app_image,
    snap,
    snapfs_list,
    start_containerd_for,
    wait_for_snapfs,
)


async def wait_for_empty_dir(path: Path, limit: float = GC_LIMIT) -> None:
    with trio.move_on_after(limit):
        while any(path.iterdir()):
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{path} still holds {sorted(p.name for p in path.iterdir())}")


async def test_image_rm_lets_containerd_gc_empty_snapfs(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    ref, (base, top) = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "pull", *SNAPSHOTTER, "--plain-http", ref)
    # A user's snapshot on top (ctr labels it a GC root) keeps its parents alive.
    await snap(containerd, "prepare", "keep", top)
    await ctr(containerd, "image", "rm", "--sync", ref)
    # Sync point: a view without a GC root goes in the next GC pass, which also sees the image
    # gone. Once snapfs lost the view, that pass is over, and "keep" must have kept its parents.
    await snap(containerd, "view", "unrooted", top)
    infos = await wait_for_snapfs(
        snapfs_daemon.address, lambda infos: not any(i.name.endswith("/unrooted") for i in infos)
    )
    assert sorted(i.kind for i in infos) == [Kind.ACTIVE, Kind.COMMITTED, Kind.COMMITTED]
    assert backend(infos, "keep").parent == backend(infos, top).name
    assert backend(infos, top).parent == backend(infos, base).name

    await snap(containerd, "rm", "keep")
    assert await wait_for_snapfs(snapfs_daemon.address, lambda infos: not infos) == []
    # containerd's Cleanup after the GC removed the directories too: no disk space leaks.
    await wait_for_empty_dir(snapfs_daemon.root / "snapshots")
    assert ls_rows((await snap(containerd, "ls")).stdout) == []


@pytest.fixture
async def containerd(
    snapfs_daemon: SnapfsDaemon, containerd_factory: ContainerdFactory
) -> Containerd:
    return await start_containerd_for(snapfs_daemon.address, containerd_factory)


class LayerDirs:
    """Lazy layers stand-in: offers a ready directory for the layers it knows, by digest."""

    def __init__(self, dirs: Mapping[str, Path]) -> None:
        self.dirs = dict(dirs)
        self.asked: list[tuple[str, str, dict[str, str]]] = []

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> RemoteLayer | None:
        self.asked.append((key, parent, dict(labels)))
        found = self.dirs.get(labels.get("containerd.io/snapshot/remote/stargz.digest", ""))
        return None if found is None else RemoteLayer(str(found))


async def test_remote_handshake_with_containerd(
    sock_dir: Path, tmp_path: Path, containerd_factory: ContainerdFactory,
    registry: RegistryServer, repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    ctr_remote = need_binary("ctr-remote")
    need_binary("runc")
    ref, (base, top) = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    pushed = image_factory.build([busybox_tree])
    busybox_digest = str(pushed.layers[0].digest)
    remote = LayerDirs({busybox_digest: busybox_tree})
    config: Config = with_overrides(
        default_config(rootless=False), root=str(tmp_path / "root"), state=str(sock_dir / "st"),
        address=str(sock_dir / "d.sock"), metrics_address="",
    )

    @asynccontextmanager
    async def open_lazy(cfg: Config, _credentials: object) -> AsyncIterator[Snapshots]:
        async with open_snapshotter(cfg.root, remote=remote) as sn:
            yield sn

    async with trio.open_nursery() as nursery:
        status: DaemonStatus = await nursery.start(
            partial(serve_daemon, config, open_snapshots=open_lazy)
        )
        cd = await start_containerd_for(status.socket, containerd_factory)
        try:
            await ctr(cd, "image", "rpull", *SNAPSHOTTER, "--plain-http", ref, binary=ctr_remote)
            assert [(k.endswith(base), p, lb["containerd.io/snapshot.ref"])
                    for k, p, lb in remote.asked[:1]] == [(True, "", base)]
            assert sorted(ls_rows((await snap(cd, "ls")).stdout)) == sorted(
                [(base, "", "Committed"), (top, base, "Committed")]
            )
            infos = await snapfs_list(status.socket)
            # Committed under the chain ID itself, as the handshake requires.
            b = backend(infos, base)
            assert (b.name, b.kind) == (base, Kind.COMMITTED)
            assert backend(infos, top).parent == base
            # The lazy layer's blob was never fetched into containerd's content store; the
            # unpacked one was.
            blobs = (await ctr(cd, "content", "ls", "-q")).stdout.split()
            assert busybox_digest not in blobs
            assert str(image_factory.build([busybox_tree, APP_LAYER]).layers[1].digest) in blobs
            res = await ctr(cd, "run", "--rm", *SNAPSHOTTER, ref, "lazy-1",
                            "sh", "-c", "cat /app/data.txt; ls /bin/busybox")
            assert res.stdout.splitlines() == ["from-lower", "/bin/busybox"]

            await ctr(cd, "image", "rm", "--sync", ref)
            assert await wait_for_snapfs(status.socket, lambda infos: not infos) == []
            # Removing the remote snapshot must not touch the lazy layer's own directory.
            assert (busybox_tree / "bin" / "busybox").is_file()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stop_containerd, cd)
            nursery.cancel_scope.cancel()


async def test_concurrent_pulls_sharing_a_layer_leave_nothing_behind(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    # Concurrent unpacks of the same busybox layer race: the losers' commits answer
    # AlreadyExists and containerd drops their extract snapshots, which GC must then remove.
    refs = []
    for i in range(3):
        await image_factory.push(registry, f"{repo_name}-{i}", [busybox_tree, [Entry(f"f{i}")]])
        refs.append(f"{registry.host}/{repo_name}-{i}:latest")
    async with trio.open_nursery() as nursery:
        for ref in refs:
            nursery.start_soon(partial(ctr, containerd, "image", "pull", *SNAPSHOTTER,
                                       "--plain-http", ref))
    rows = ls_rows((await snap(containerd, "ls")).stdout)
    assert len(rows) == 4 and {kind for _, _, kind in rows} == {"Committed"}
    for i, ref in enumerate(refs):
        res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, f"c{i}", "ls", "/")
        assert "bin" in res.stdout.split()
    for ref in refs:
        await ctr(containerd, "image", "rm", "--sync", ref)
    assert await wait_for_snapfs(snapfs_daemon.address, lambda infos: not infos) == []
    await wait_for_empty_dir(snapfs_daemon.root / "snapshots")


async def test_estargz_layer_is_pulled_lazily_through_containerd(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    ctr_remote = need_binary("ctr-remote")
    need_binary("runc")
    built = build_estargz(io.BytesIO(build_tar(entries_from_dir(busybox_tree))))
    assert built.blob is not None
    lazy = Layer(blob=built.blob, media_type=media_type_for("gzip"), diff_id=built.diff_id,
                 annotations=built.annotations)
    pushed = await image_factory.push(registry, repo_name, [lazy, APP_LAYER])
    ref = f"{registry.host}/{repo_name}:latest"
    base, top = (str(c) for c in chain_ids([layer.diff_id for layer in pushed.image.layers]))

    await ctr(containerd, "image", "rpull", *SNAPSHOTTER, "--plain-http", ref, binary=ctr_remote)
    assert sorted(ls_rows((await snap(containerd, "ls")).stdout)) == sorted(
        [(base, "", "Committed"), (top, base, "Committed")]
    )
    infos = await snapfs_list(snapfs_daemon.address)
    assert backend(infos, base).name == base  # committed by snapfs under the chain ID
    blobs = (await ctr(containerd, "content", "ls", "-q")).stdout.split()
    assert str(lazy.digest) not in blobs  # containerd never downloaded the lazy layer
    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, "lazy",
                    "sh", "-c", "cat /app/data.txt; busybox sha256sum /bin/busybox")
    # Every byte of the lazily served binary is right, not just the part `sh` executed.
    want = hashlib.sha256((busybox_tree / "bin/busybox").read_bytes()).hexdigest()
    assert res.stdout.split() == ["from-lower", want, "/bin/busybox"]

    # After a restart snapfs serves the lazy layer again (containerd redials within ~3 s).
    await snapfs_daemon.restart(kill=True)
    with trio.fail_after(GC_LIMIT):
        for attempt in itertools.count():
            res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, f"lazy-{attempt}",
                            "busybox", "sha256sum", "/bin/busybox", check=False)
            if res.returncode == 0 or "unavailable" not in res.stderr:
                break
            await trio.sleep(0.2)
    assert res.stdout.split() == [want, "/bin/busybox"], res.stderr

    await ctr(containerd, "image", "rm", "--sync", ref)
    assert await wait_for_snapfs(snapfs_daemon.address, lambda infos: not infos) == []
    # containerd's GC (Remove, then Cleanup) gives back the lazy layer's disk too: its
    # materialised directory and every chunk of it.
    await wait_for_empty_dir(snapfs_daemon.root / "layers")
    chunks = snapfs_daemon.root / "chunks" / "sha256"
    if chunks.exists():
        await wait_for_empty_dir(chunks)
