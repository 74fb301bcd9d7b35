"""A lazy layer as the FUSE filesystem sees it: the TOC as a tree, reads through the fetcher.

The TOC's entries become ``snapfs.fuse.Entry`` records in TOC (tar) order; ``build_tree`` then
presents whiteouts and opaque directories the way overlayfs expects, hides the eStargz
prefetch landmarks, and gives hardlinks their target's inode. Chunk records only continue
a file, so they are left out. Contents are read by path; a hardlink's node carries its
target's path (``link_group``), which the layer's chunk map also holds. Once the layer is
complete, reads come from its verified directory instead; once it failed verification, every
read fails (EIO). Must not decide when either happens (``snapfs.lazy.lifecycle`` does).

Errors heal: a read that fails (a registry that errs or stays silent past ``read_timeout``, a
chunk that does not verify, a cache race) fails that read alone and the next one tries
again. The failure is kept as ``last_error`` naming registry, repository and blob (``snapfs
status`` shows it) and logged once, on one line naming them too. A malformed TOC entry costs
only itself: a file whose chunks cannot be planned or verified stays listed and every read
of it fails; an entry the tree cannot hold (a path that escapes, a file used as a
directory, a dangling hardlink) is left out, with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import trio

from content.errors import (
    ContentError,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from content.lazyformat import LazyLayer
from content.toc import TOCEntry
from snapfs.fuse.view import Entry, Node, build_tree
from snapfs.lazy.complete import open_beneath
from snapfs.lazy.fetcher import LayerFetcher

log = logging.getLogger(__name__)


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
                 userxattr: bool = False, read_timeout: float | None = None) -> None:
        self._id = layer_id
        self.layer = layer
        self.fetcher = fetcher
        self._userxattr = userxattr
        # Built on first use (``root``): a daemon whose FUSE server serves the layer never
        # needs the tree (~0.2 s of a Prepare for 10000 entries).
        self._root: Node | None = None
        # Seconds a read may wait for the registry before it fails (EIO); None: no deadline.
        self.read_timeout = read_timeout
        # The last read failure, naming registry, repository and blob ("" if none).
        self.last_error = ""
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
        if self._root is None:
            self._root = self._build()
        return self._root

    def _build(self) -> Node:
        f = self.fetcher
        left_out: list[str] = []
        try:
            root = build_tree(toc_entries(self.layer.toc.entries), userxattr=self._userxattr,
                              left_out=left_out)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{f.what}: {exc}") from None
        for why in left_out:
            log.warning("%s: TOC entry left out: %s", f.what, why)
        for path, why in self.layer.malformed.items():
            log.warning("%s: /%s cannot be read: %s", f.what, path, why)
        return root

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if self.broken is not None:
            raise DigestMismatch(f"{self.fetcher.what}: out of service", "", self.broken)
        path = node.link_group or node.path
        if self.local_dir is not None:
            return await trio.to_thread.run_sync(_pread, self.local_dir, path, offset, size,
                                                 limiter=self._local_reads)
        try:
            if path in self.layer.malformed:
                raise FailedPrecondition(f"{self.fetcher.what}: /{path}: its TOC entry is "
                                         f"malformed: {self.layer.malformed[path]}")
            if self.read_timeout is None:
                return await self.fetcher.read(path, offset, size)
            with trio.fail_after(self.read_timeout):
                return await self.fetcher.read(path, offset, size)
        except trio.TooSlowError:
            exc: ContentError = Unavailable(
                f"{self.fetcher.what}: /{path} at {offset}: the registry did not answer within "
                f"{self.read_timeout:g} s ([fetch] read_timeout)")
            self._failed(path, offset, exc)
            raise exc from None
        except ContentError as exc:
            self._failed(path, offset, exc)
            raise

    def _failed(self, path: str, offset: int, exc: ContentError) -> None:
        f = self.fetcher
        where = f"registry {f.ref.domain}, repository {f.ref.repository}, blob {f.blob}"
        self.last_error = f"{where}: /{path} at {offset}: {exc}"
        log.error("lazy read failed (the next read tries again; `snapfs status` shows the "
                  "layer's last error): %s", self.last_error)


def _pread(root: Path, path: str, offset: int, size: int) -> bytes:
    fd = open_beneath(root, path)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


__all__ = ["LazyLayerView", "toc_entries"]
