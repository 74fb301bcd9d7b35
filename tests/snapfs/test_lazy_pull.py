"""Lazy pulling end to end: real registry, real FUSE, real overlayfs, in-process and daemon.

Images are eStargz (bottom) + zstd:chunked (top) layers built with the writers and pushed to
the real registry; every file read through the lazy mount must equal the native extraction
of the same layer blob (``apply_layer``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from content.digest import digest_bytes
from content.errors import NotFound
from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from content.reference import Reference
from content.registry import open_registry
from content.store import ContentStore
from content.tarlayer import Entry, build_tar
from content.unpack import apply_layer
from content.zstdchunked import build_zstd_chunked
from snapfs.app.images import ImageStore
from snapfs.app.pull import PulledImage, Puller
from snapfs.lazy.layers import LazyLayers, layer_id
from snapfs.lazy.locality import START_WINDOW
from snapfs.lazy.open import open_lazy_layers
from snapfs.lazy.schedule import FetchOptions
from snapfs.snapshot.mounting import mount_all
from snapfs.snapshot.snapshotter import open_snapshotter
from snapfs.snapshot.types import Snapshots
from snapfs.sys.mountops import unmount
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import RegistryServer
from tests.snapfs.fuse_memlayer import need_fuse

CHUNK = 64 * 1024
T = 1_600_000_000
HIDDEN = {"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"}


def need_lazy() -> None:
    need_fuse()
    need_binary("mount")
    need_binary("docker-registry", "/usr/bin/docker-registry")


def bottom_entries(seed: str) -> list[Entry]:
    rnd = random.Random(seed)
    shared = random.Random("shared" + seed).randbytes(200 * 1024)
    out = [
        Entry("etc", "dir", mtime=T), Entry("usr", "dir", mtime=T),
        Entry("usr/bin", "dir", mtime=T), Entry("usr/lib", "dir", mtime=T),
        Entry("usr/share", "dir", mtime=T), Entry("var", "dir", mtime=T),
        Entry("var/cache", "dir", mtime=T), Entry("home", "dir", mtime=T),
        Entry("home/user", "dir", mode=0o700, uid=1000, gid=1000, mtime=T),
        Entry("dev", "dir", mtime=T), Entry("run", "dir", mtime=T),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mtime=T + 1),
        Entry("etc/caps", data=b"caps\n", mode=0o640, gid=42, mtime=T + 2,
              xattrs={"user.comment": b"hello", "trusted.note": b"\x00\x01"}),
        Entry("etc/gone", data=b"deleted upstairs\n", mtime=T),
        Entry("usr/bin/tool", data=b"\x7fELF" + rnd.randbytes(3000), mode=0o4755, mtime=T),
        Entry("usr/bin/tool2", "hardlink", linkname="usr/bin/tool"),
        Entry("usr/lib/big.so", data=rnd.randbytes(1024 * 1024 + 77), mode=0o755, mtime=T),
        Entry("usr/lib/libbig.so", "symlink", linkname="big.so", mtime=T),
        Entry("usr/lib/shared.bin", data=shared, mtime=T),
        Entry("var/cache/old1", data=b"old1\n", mtime=T),
        Entry("var/cache/old2", data=b"old2\n", mtime=T),
        Entry("home/user/secret", data=b"s3cret\n", mode=0o600, uid=1000, gid=1000, mtime=T),
        Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3, mtime=T),
        Entry("run/pipe", "fifo", mode=0o600, mtime=T),
        Entry("empty", data=b"", mtime=T),
    ]
    out += [Entry(f"usr/share/doc{i:03d}", data=rnd.randbytes(4096), mtime=T) for i in range(80)]
    return out


def big_so(seed: str) -> bytes:
    return next(e.data for e in bottom_entries(seed) if e.path == "usr/lib/big.so")


def top_entries(seed: str) -> list[Entry]:
    shared = random.Random("shared" + seed).randbytes(200 * 1024)
    return [
        Entry("etc", "dir", mtime=T + 10), Entry("var", "dir", mtime=T),
        Entry("var/cache", "dir", mtime=T + 10), Entry("opt", "dir", mtime=T),
        Entry("etc/gone", "whiteout", mtime=T),
        Entry("var/cache", "opaque"),
        Entry("var/cache/new", data=b"new\n", mtime=T + 10),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nu:x:1:1::/:/bin/sh\n",
              mtime=T + 10),
        Entry("opt/shared.bin", data=shared, mtime=T + 10),
    ]


def lazy_layer(entries: list[Entry], fmt: str) -> Layer:
    tar = io.BytesIO(build_tar(entries))
    if fmt == "estargz":
        built = build_estargz(tar, chunk_size=CHUNK)
        media_type = OCI_LAYER_GZIP
    else:
        built = build_zstd_chunked(tar, chunk_size=CHUNK)
        media_type = OCI_LAYER_ZSTD
    assert built.blob is not None
    return Layer(built.blob, media_type, built.diff_id, dict(built.annotations))


def tree(root: Path) -> dict[str, dict[str, Any]]:
    """Everything a user can observe of a tree (blocking: run it in a thread)."""
    out: dict[str, dict[str, Any]] = {}
    first_of_inode: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if rel in HIDDEN:
                continue
            st = os.lstat(path)
            rec: dict[str, Any] = {
                "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                "mtime": st.st_mtime_ns,
                "xattrs": {k: os.getxattr(path, k, follow_symlinks=False)
                           for k in sorted(os.listxattr(path, follow_symlinks=False))},
            }
            if stat.S_ISREG(st.st_mode):
                rec["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                rec["size"] = st.st_size
                rec["nlink"] = st.st_nlink
                rec["same_as"] = first_of_inode.setdefault(st.st_ino, rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
                if st.st_rdev == 0:
                    # A whiteout: native extraction (like containerd's) leaves it the time of
                    # its creation; overlayfs never shows it, so its time is not observable.
                    del rec["mtime"]
            out[rel] = rec
    return out


async def native_tree(layer: Layer, dest: Path) -> dict[str, dict[str, Any]]:
    def run() -> dict[str, dict[str, Any]]:
        apply_layer(io.BytesIO(layer.blob), dest)
        return tree(dest)

    return await trio.to_thread.run_sync(run)


async def read_file(path: Path) -> bytes:
    return await trio.to_thread.run_sync(path.read_bytes)


@asynccontextmanager
async def lazy_puller(
    root: Path, options: FetchOptions | None = None,
) -> AsyncIterator[tuple[Puller, LazyLayers, Snapshots]]:
    """An in-process snapshotter with lazy layers, as the embedded engine opens it
    (background fetching off unless ``options`` say otherwise)."""
    async with (
        open_registry() as registry,
        open_lazy_layers(root, registry, options=options or FetchOptions(background=False))
        as lazy,
        open_snapshotter(root, remote=lazy) as sn,
    ):
        with ContentStore(root / "content") as store:
            images = ImageStore(root)
            try:
                yield Puller(registry, store, sn, images), lazy, sn
            finally:
                images.close()


@asynccontextmanager
async def mounted(snapshots: Snapshots, key: str, parent: str,
                  target: Path) -> AsyncIterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mounts = await snapshots.view(key, parent)
    await mount_all(mounts, target)
    try:
        yield target
    finally:
        with trio.CancelScope(shield=True):
            await unmount(target)


async def push_image(image_factory: ImageFactory, registry: RegistryServer, repo: str,
                     seed: str) -> tuple[Any, list[Layer]]:
    layers = [lazy_layer(bottom_entries(seed), "estargz"),
              lazy_layer(top_entries(seed), "zstd:chunked")]
    pushed = await image_factory.push(registry, repo, layers)
    return pushed, layers


async def test_lazy_pull_serves_what_native_extraction_gives(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    async with lazy_puller(root) as (puller, lazy, sn):
        result: PulledImage = await puller.pull(pushed.ref)
        # The lazy path knows layers by digest only; their sizes come from HEAD.
        assert await lazy.source.blob_size(pushed.ref, layers[0].digest) == layers[0].size
        with pytest.raises(NotFound):
            await lazy.source.blob_size(pushed.ref, digest_bytes(b"not pushed"))
        assert (result.lazy_layers, result.native_layers) == (2, 0)
        bottom, top = (root / "fuse" / layer_id(layer.digest) for layer in layers)
        stats_bottom = lazy.fetcher(layers[0].digest).stats
        stats_top = lazy.fetcher(layers[1].digest).stats
        assert stats_bottom.requests == 0  # indexing is not fetching

        # A few files: a small fraction of the layer, in few requests.
        assert await read_file(bottom / "etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"
        assert (await read_file(bottom / "usr/bin/tool2"))[:4] == b"\x7fELF"
        assert stats_bottom.requests <= 2
        # The files, and at most one locality window of neighbours per request.
        assert stats_bottom.bytes_fetched - stats_bottom.window_fetched_bytes \
            < layers[0].size // 10
        assert stats_bottom.window_fetched_bytes <= 2 * START_WINDOW

        # The same file in both layers (and both formats) is fetched once.
        shared = await read_file(bottom / "usr/lib/shared.bin")
        before = stats_top.bytes_fetched
        assert await read_file(top / "opt/shared.bin") == shared
        assert stats_top.bytes_fetched == before and stats_top.cache_hits >= 3

        # Every file, attribute, link, xattr and whiteout equals the native extraction.
        for layer, lazy_dir, name in ((layers[0], bottom, "bottom"), (layers[1], top, "top")):
            expected = await native_tree(layer, tmp_path / f"native-{name}")
            got = await trio.to_thread.run_sync(tree, lazy_dir)
            assert got.keys() == expected.keys()
            for path in expected:
                assert got[path] == expected[path], path

        # Through the snapshot's overlay, as a container sees it.
        top_chain = str(result.record.chain_ids[-1])
        async with mounted(sn, "view-1", top_chain, tmp_path / "merged") as merged:
            assert not await trio.to_thread.run_sync((merged / "etc/gone").exists)
            assert await trio.to_thread.run_sync(os.listdir, merged / "var/cache") == ["new"]
            assert (await read_file(merged / "etc/passwd")).endswith(b"u:x:1:1::/:/bin/sh\n")
            assert await read_file(merged / "usr/lib/big.so") == \
                big_so(repo_name)


async def test_a_corrupted_chunk_is_never_served(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, caplog: pytest.LogCaptureFixture) -> None:
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    async with lazy_puller(root) as (puller, lazy, _):
        await puller.pull(pushed.ref)
        fetcher = lazy.fetcher(layers[0].digest)
        chunk = fetcher.layer.files["usr/lib/big.so"][8]
        blob_file = registry.blob_path(layers[0].digest)
        data = bytearray(blob_file.read_bytes())
        data[chunk.blob_offset + chunk.blob_length // 2] ^= 0xFF
        blob_file.write_bytes(bytes(data))
        big = root / "fuse" / layer_id(layers[0].digest) / "usr/lib/big.so"

        def read_at(offset: int) -> bytes:
            with open(big, "rb") as f:
                f.seek(offset)
                return f.read(100)

        with pytest.raises(OSError) as err:
            await trio.to_thread.run_sync(read_at, chunk.file_offset + 10)
        assert err.value.errno == errno.EIO
        assert fetcher.stats.verify_failures >= 1
        assert not fetcher.cache.has(chunk.digest)
        logged = caplog.text
        assert layers[0].digest.short() in logged and str(chunk.blob_offset) in logged
        assert str(chunk.digest) in logged
        # Other files of the layer are still served.
        passwd = root / "fuse" / layer_id(layers[0].digest) / "etc/passwd"
        assert await read_file(passwd) == b"root:x:0:0:root:/root:/bin/sh\n"


async def pull_through(snapshots: Snapshots, tmp_path: Path, ref: Reference) -> PulledImage:
    """Pull ``ref`` with this process's content store and image table, through ``snapshots``
    (a daemon's client)."""
    async with open_registry() as reg:
        with ContentStore(tmp_path / "content") as store:
            images = ImageStore(tmp_path / "images")
            try:
                return await Puller(reg, store, snapshots, images).pull(ref)
            finally:
                images.close()


async def test_daemon_lazy_pull_survives_kill_9(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    pushed, _ = await push_image(image_factory, registry, repo_name, repo_name)
    async with snapfs_daemon.client() as client:
        result = await pull_through(client, tmp_path, pushed.ref)
        assert result.lazy_layers == 2
        top_chain = str(result.record.chain_ids[-1])
        async with mounted(client, "view-1", top_chain, tmp_path / "m1") as merged:
            first = await read_file(merged / "usr/lib/big.so")
            assert first == big_so(repo_name)
    await snapfs_daemon.restart(kill=True)
    async with snapfs_daemon.client() as client:
        mounts = await client.mounts("view-1")
        target = tmp_path / "m2"
        target.mkdir()
        await mount_all(mounts, target)
        try:
            assert await read_file(target / "usr/lib/big.so") == first
            assert (await read_file(target / "etc/passwd")).endswith(b"u:x:1:1::/:/bin/sh\n")
            assert await read_file(target / "var/cache/new") == b"new\n"
        finally:
            with trio.CancelScope(shield=True):
                await unmount(target)


async def test_daemon_prepares_on_a_lazy_parent_after_its_dentry_expired(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    """A child of a lazy layer, prepared once the kernel forgot the layer directory's entry.

    Prepare reads the owner of the parent's root, a directory on the FUSE mount that the
    daemon's own loop serves: done from the loop, that stat waits for itself and the daemon
    hangs. The layer directories' kernel entries live one second, so wait that out first.
    """
    need_lazy()
    pushed, _ = await push_image(image_factory, registry, repo_name, repo_name)
    async with snapfs_daemon.client() as client:
        result = await pull_through(client, tmp_path, pushed.ref)
        assert result.lazy_layers == 2
        await trio.sleep(1.5)  # not a measurement: lets the kernel's entry for the dir expire
        # A hung daemon never answers; the client gives up and the test fails, not hangs.
        with trio.fail_after(30):
            mounts = await client.prepare("child", str(result.record.chain_ids[-1]))
            await client.remove("child")
    assert mounts and mounts[0].type == "overlay"
