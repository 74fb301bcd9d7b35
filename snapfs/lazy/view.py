"""A lazy layer as the FUSE filesystem sees it: the TOC as a tree, reads through the fetcher.

The TOC's entries become ``snapfs.fuse.Entry`` records in TOC (tar) order; ``build_tree`` then
presents whiteouts and opaque directories the way overlayfs expects, hides the eStargz
prefetch landmarks, and gives hardlinks their target's inode. Chunk records only continue
a file, so they are left out. Contents are read by path; a hardlink's node carries its
target's path (``link_group``), which the layer's chunk map also holds.
"""

from __future__ import annotations

from collections.abc import Iterable

from content.lazyformat import LazyLayer
from content.toc import TOCEntry
from snapfs.fuse.view import Entry, Node, build_tree
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

    @property
    def layer_id(self) -> str:
        return self._id

    def root(self) -> Node:
        return self._root

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        return await self.fetcher.read(node.link_group or node.path, offset, size)


__all__ = ["LazyLayerView", "toc_entries"]
