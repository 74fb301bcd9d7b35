"""LayerFS handlers called directly (no kernel): bookkeeping a mount can't easily show."""

from __future__ import annotations

import errno
from pathlib import Path

import pyfuse3
import pytest

from content.errors import AlreadyExists, InvalidArgument, NotFound
from snapfs.fuse import LayerFS
from snapfs.fuse.inodes import ROOT_INODE
from tests.snapfs.fuse_memlayer import mem_layer, sample_files


async def _walk(fs: LayerFS, path: str) -> list[int]:
    """The inodes looked up along ``path`` (each lookup counts for the kernel)."""
    inos: list[int] = [ROOT_INODE]
    for part in path.split("/"):
        inos.append((await fs.lookup(inos[-1], part.encode())).st_ino)
    return inos[1:]


async def _path(fs: LayerFS, path: str) -> int:
    return (await _walk(fs, path))[-1]


async def test_removed_layer_lives_until_forgotten_and_released() -> None:
    fs = LayerFS(Path("/nonexistent"))
    fs.add_layer(mem_layer("a", sample_files()))
    layer_root, etc, ino = await _walk(fs, "a/etc/passwd")
    fh = (await fs.open(ino, 0)).fh
    await fs.remove_layer("a")  # not mounted: no kernel invalidation
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fs.lookup(ROOT_INODE, b"a")
    assert info.value.errno == errno.ENOENT
    assert await fs.read(fh, 0, 4) == b"root"
    await fs.forget([(ino, 1)])
    assert (await fs.getattr(ino)).st_ino == ino  # still held by the open handle...
    await fs.release(fh)
    await fs.forget([(layer_root, 1), (etc, 1)])
    with pytest.raises(pyfuse3.FUSEError) as info:  # ...and gone once nothing holds it
        await fs.getattr(ino)
    assert info.value.errno == errno.ENOENT


async def test_handlers_only_raise_fuse_errors() -> None:
    fs = LayerFS(Path("/nonexistent"))
    layer = mem_layer("a", sample_files())
    fs.add_layer(layer)
    for call in (fs.getattr(12345), fs.getattr((99 << 32) | 1), fs.readlink(ROOT_INODE + 0),
                 fs.read(777, 0, 10), fs.getxattr(await _path(fs, "a/etc"), b"user.x"),
                 fs.open(await _path(fs, "a/etc/passwd"), 2)):
        with pytest.raises(pyfuse3.FUSEError):
            await call
    fh = (await fs.open(await _path(fs, "a/etc/passwd"), 0)).fh
    layer.contents["etc/passwd"] = b"short"  # a view that returns too few bytes is a bug
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fs.read(fh, 0, 100)
    assert info.value.errno == errno.EIO
    assert not fs.stats("a").healthy
    assert fs.stats("a").requests["read"] == 1


def test_layer_ids_are_checked() -> None:
    fs = LayerFS(Path("/nonexistent"))
    fs.add_layer(mem_layer("a", []))
    with pytest.raises(AlreadyExists):
        fs.add_layer(mem_layer("a", []))
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(InvalidArgument):
            fs.add_layer(mem_layer(bad, []))
    with pytest.raises(NotFound):
        fs.stats("zzz")
    assert fs.layer_ids() == ["a"]
