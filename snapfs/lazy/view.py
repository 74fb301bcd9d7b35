"""A lazy layer as the FUSE filesystem sees it: the TOC as a tree, reads through the fetcher.

The TOC's entries become ``snapfs.fuse.Entry`` records in TOC (tar) order; ``build_tree`` then
presents whiteouts and opaque directories the way overlayfs expects, hides the eStargz
prefetch landmarks, and gives hardlinks their target's inode. Chunk records only continue
a file, so they are left out. Contents are read by path; a hardlink's node carries its
target's path (``link_group``), which the layer's chunk map also holds. Once the layer is
complete, reads come from its verified directory instead; once it failed verification, every
read fails (EIO). Must not decide when either happens (``snapfs.lazy.lifecycle`` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import trio

from content.errors import DigestMismatch
from content.lazyformat import LazyLayer
from content.toc import TOCEntry
from snapfs.fuse.view import Entry, Node, build_tree
from snapfs.lazy.complete import open_beneath
from snapfs.lazy.fetcher import LayerFetcher


def toc_entries(entries: Iterable[TOCEntry]) -> list[Entry]:
    """The filesystem records of a TOC (pure)."""
    return [
        Entry(name=e.name, type=e.type, mode=e.mode, uid=e.uid, gid=e.gid, size=e.size,
              mtime_ns=e.mtime_ns, linkname=e.linkname, devmajor=e.devmajor,
              devminor=e.devminor, xattrs=e.xattrs)
        for e in entries if e.type != "chunk"
    ]


class LazyLayerView:
    """``snapfs.fuse.LayerView`` over one lazy layer."""

    def __init__(self, layer_id: str, layer: LazyLayer, fetcher: LayerFetcher, *,
                 userxattr: bool = False) -> None:
        self._id = layer_id
        self.layer = layer
        self.fetcher = fetcher
        self._root = build_tree(toc_entries(layer.toc.entries), userxattr=userxattr)
        # Once the layer is complete (verified, materialised), reads come from its directory:
        # the chunk cache may drop the layer's chunks, and mounts made before keep working.
        self.local_dir: Path | None = None
        # Why the layer is out of service (a verification failure), or None.
        self.broken: str | None = None
        self._local_reads = trio.CapacityLimiter(8)  # preads of materialised files

    @property
    def layer_id(self) -> str:
        return self._id

    def root(self) -> Node:
        return self._root

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if self.broken is not None:
            raise DigestMismatch(f"{self.fetcher.what}: out of service", "", self.broken)
        path = node.link_group or node.path
        if self.local_dir is not None:
            return await trio.to_thread.run_sync(_pread, self.local_dir, path, offset, size,
                                                 limiter=self._local_reads)
        return await self.fetcher.read(path, offset, size)


def _pread(root: Path, path: str, offset: int, size: int) -> bytes:
    fd = open_beneath(root, path)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


__all__ = ["LazyLayerView", "toc_entries"]
