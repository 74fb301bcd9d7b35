"""The TOC as a FUSE tree, and reads through the fetcher."""

from __future__ import annotations

from pathlib import Path

from content.chunkcache import ChunkCache
from content.tarlayer import Entry
from snapfs.fuse import NodeKind
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.view import LazyLayerView
from tests.snapfs.test_fetcher import BIG, REF, MemSource, lazy

ENTRIES = [
    Entry("etc", "dir", mode=0o750, uid=1, gid=2, mtime=1_600_000_000),
    Entry("etc/caps", data=b"caps\n", mode=0o640, uid=0, gid=42, mtime=1_600_000_001,
          xattrs={"user.comment": b"hello"}),
    Entry("bin/busybox", data=b"\x7fELF" + b"x" * 100, mode=0o4755),
    Entry("bin/sh", "hardlink", linkname="bin/busybox"),
    Entry("lib", "symlink", linkname="usr/lib"),
    Entry("usr/lib/big.so", data=BIG),
    Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
    Entry("run/pipe", "fifo", mode=0o600),
    Entry("gone", "whiteout"),
    Entry("opq", "opaque"),
    Entry("opq/kept", data=b"kept\n"),
]


async def view(tmp_path: Path) -> LazyLayerView:
    blob, digest, layer = await lazy(ENTRIES)
    fetcher = LayerFetcher(MemSource({digest: blob}), REF, digest, layer,
                           ChunkCache(tmp_path / "chunks"))
    return LazyLayerView("layer1", layer, fetcher)


async def test_tree_carries_attributes_links_devices_and_whiteouts(tmp_path: Path) -> None:
    root = (await view(tmp_path)).root()
    assert sorted(root.children) == ["bin", "dev", "etc", "gone", "lib", "opq", "run", "usr"]
    etc = root.children["etc"]
    assert (etc.kind, etc.mode, etc.uid, etc.gid) == (NodeKind.DIR, 0o750, 1, 2)
    caps = etc.children["caps"]
    assert (caps.mode, caps.gid, caps.size) == (0o640, 42, 5)
    assert caps.mtime_ns == 1_600_000_001 * 10**9
    assert caps.xattrs == {"user.comment": b"hello"}
    sh, bb = root.children["bin"].children["sh"], root.children["bin"].children["busybox"]
    assert sh.link_group == bb.link_group == "bin/busybox" and bb.nlink == 2
    assert bb.mode == 0o4755
    assert root.children["lib"].linkname == "usr/lib"
    null = root.children["dev"].children["null"]
    assert null.kind is NodeKind.CHAR and null.rdev == (1 << 8 | 3)
    assert root.children["run"].children["pipe"].kind is NodeKind.FIFO
    assert root.children["gone"].kind is NodeKind.CHAR and root.children["gone"].rdev == 0
    assert root.children["opq"].xattrs["trusted.overlay.opaque"] == b"y"
    # eStargz bookkeeping is not part of the filesystem.
    assert ".no.prefetch.landmark" not in root.children
    assert "stargz.index.json" not in root.children


async def test_reads_go_through_the_fetcher_including_hardlinks(tmp_path: Path) -> None:
    v = await view(tmp_path)
    root = v.root()
    sh = root.children["bin"].children["sh"]
    assert await v.read(sh, 0, sh.size) == b"\x7fELF" + b"x" * 100
    big = root.children["usr"].children["lib"].children["big.so"]
    assert await v.read(big, 1000, 50000) == BIG[1000:51000]
    assert v.fetcher.stats.bytes_served == 104 + 50000
