"""The pyfuse3 handlers: one read-only tree, one directory per lazy layer.

Handlers are short: they resolve inodes and handles through ``Inodes`` and delegate file
contents to the layer's ``LayerView``. Every handler wears ``fuse_handler`` so only
``FUSEError`` leaves it. Layer contents are immutable, so entries and attributes get long
kernel timeouts and open files keep the page cache; only the root (the list of layers)
changes, and removing a layer invalidates its entry explicitly.

Must not open LMDB or make HTTP requests: every byte comes through a layer's view.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Collection, Sequence
from pathlib import Path

import pyfuse3
import trio

from content.errors import ContentError, Internal, NotFound
from snapfs.fuse.errno_map import errno_for, fuse_handler
from snapfs.fuse.inodes import (
    BLOCK,
    ROOT_INODE,
    Access,
    AccessRecorder,
    Fh,
    Handle,
    Inodes,
    LayerState,
    LayerStats,
    Recordings,
    node_attributes,
)
from snapfs.fuse.view import LayerView, Node, NodeKind

log = logging.getLogger(__name__)

ROOT_TIMEOUT = 1.0  # the root's attributes (nlink) change as layers come and go
ROOT_FH = 0  # directory handle of the mount root; layer handles start at 1


class LayerFS(pyfuse3.Operations):
    """The filesystem behind ``<root>/fuse``: ``add_layer`` / ``remove_layer`` at runtime."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, mountpoint: Path) -> None:
        super().__init__()
        self.mountpoint = mountpoint
        self._inodes = Inodes()
        self._mounted = False
        self._recordings = Recordings()

    # ---- management API (called from the daemon's trio loop) ----

    def add_layer(self, view: LayerView) -> Path:
        """Expose ``view`` as ``<mountpoint>/<layer_id>``; returns that directory."""
        state = self._inodes.add(view)
        log.info("fuse: layer %s added (slot %d, %d inodes)", state.layer_id,
                 state.table.slot, len(state.table.nodes))
        return self.mountpoint / view.layer_id

    async def remove_layer(self, layer_id: str) -> None:
        """Hide the layer's directory. Open files and cached inodes keep working until the
        kernel releases them; then the layer's bookkeeping is dropped."""
        self._inodes.remove(layer_id)
        log.info("fuse: layer %s removed", layer_id)
        if self._mounted:
            # Blocks until related requests finish, so it must not run on the loop that
            # serves them.
            await trio.to_thread.run_sync(_invalidate_root_entry, os.fsencode(layer_id))

    def layer_ids(self) -> list[str]:
        return sorted(self._inodes.active)

    def stats(self, layer_id: str) -> LayerStats:
        state = self._inodes.active.get(layer_id)
        if state is None:
            raise NotFound(f"layer {layer_id}: not mounted")
        return state.stats()

    def layer_root(self, layer_id: str) -> Node:
        state = self._inodes.active.get(layer_id)
        if state is None:
            raise NotFound(f"layer {layer_id}: not mounted")
        return state.view.root()

    def start_recording(self, layers: Collection[str] | None = None) -> AccessRecorder:
        """Record the regular files opened or read from now on (in ``layers``, or all)."""
        return self._recordings.start(layers)

    def stop_recording(self, recorder: AccessRecorder) -> list[Access]:
        """Stop ``recorder``; its first accesses per (layer, path), in order."""
        return self._recordings.stop(recorder)

    def set_mounted(self, mounted: bool) -> None:
        self._mounted = mounted

    # ---- Reporter (used by fuse_handler) ----

    def _locate(self, target: int, by_fh: bool) -> tuple[LayerState | None, str]:
        if by_fh:
            h = self._inodes.handles.get(Fh(target))
            return (h.layer, h.node.path) if h is not None else (None, f"fh {target}")
        state = self._inodes.layer_of(target)
        if state is None:
            return None, "/" if target == ROOT_INODE else f"inode {target}"
        try:
            return state, state.table.node(target).path
        except NotFound:
            return state, f"inode {target}"

    def note_request(self, op: str, target: int, by_fh: bool) -> None:
        state, _ = self._locate(target, by_fh)
        if state is not None:
            state.requests[op] += 1

    def note_failure(
        self, op: str, target: int, by_fh: bool, exc: BaseException, unexpected: bool
    ) -> None:
        state, path = self._locate(target, by_fh)
        layer = state.layer_id if state is not None else "-"
        if unexpected:
            log.error("fuse %s: layer %s path /%s: unexpected error (this request fails "
                      "with EIO; the next one tries again)", op, layer, path, exc_info=exc)
            if state is not None:
                state.healthy = False
        elif op == "read" and isinstance(exc, ContentError):
            # The layer's view logged it, naming registry, repository and blob.
            log.debug("fuse read: layer %s path /%s: %s", layer, path, exc)
        elif op != "lookup" or errno_for(exc) != errno.ENOENT:
            log.warning("fuse %s: layer %s path /%s: %s", op, layer, path, exc)

    # ---- handlers ----

    def _root_attributes(self) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ROOT_INODE
        a.entry_timeout = a.attr_timeout = ROOT_TIMEOUT
        a.st_mode = stat.S_IFDIR | 0o755
        a.st_nlink = 2 + len(self._inodes.active)
        a.st_blksize = BLOCK
        return a

    def _attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino == ROOT_INODE:
            return self._root_attributes()
        _, node = self._inodes.resolve(ino)
        return node_attributes(ino, node)

    @fuse_handler("lookup")
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        sname = os.fsdecode(name)
        ino: int | None
        if parent_inode == ROOT_INODE:
            if sname in (".", ".."):
                return self._root_attributes()
            state = self._inodes.active.get(sname)
            ino = state.table.root_inode if state is not None else None
        else:
            state, node = self._inodes.resolve(parent_inode)
            if node.kind is not NodeKind.DIR:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            ino = state.table.child(parent_inode, sname)
            if ino is not None and self._recordings.active:
                self._recordings.looked_up(ino, node, sname, state.table.node(ino))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attrs = self._attributes(ino)
        self._inodes.remember(ino)
        return attrs

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            for ino, count in inode_list:
                self._inodes.forget(ino, count)
        except Exception:  # forget has no reply; a bug here must still not kill the mount
            log.exception("fuse forget: bookkeeping failed")

    @fuse_handler("getattr")
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    @fuse_handler("readlink")
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> bytes:
        _, node = self._inodes.resolve(inode)
        if node.kind is not NodeKind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.linkname)

    @fuse_handler("access")
    async def access(
        self, inode: int, mode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> bool:
        # default_permissions makes the kernel check mode bits; we only confirm existence.
        self._attributes(inode)
        return True

    @fuse_handler("open")
    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        state, node = self._inodes.resolve(inode)
        if node.kind is not NodeKind.REG:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind is NodeKind.DIR else errno.EINVAL)
        fh = self._inodes.open(inode)
        self._recordings.accessed(state.layer_id, inode, node)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)

    @fuse_handler("read", by_fh=True)
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h: Handle = self._inodes.handle(fh)
        if self._recordings.active:  # a file opened before the recording began
            self._recordings.accessed(h.layer.layer_id, h.inode, h.node)
        end = min(off + size, h.node.size)
        if off >= end:
            return b""
        data = await h.layer.view.read(h.node, off, end - off)
        if len(data) != end - off:
            # A short reply would read as end-of-file: silent truncation, never acceptable.
            raise Internal(f"layer {h.layer.layer_id}: /{h.node.path}: read at {off} returned "
                           f"{len(data)} bytes, expected {end - off}")
        h.layer.bytes_read += len(data)
        h.layer.healthy = True  # an unexpected error failed one read, not the layer
        return data

    @fuse_handler("release", by_fh=True)
    async def release(self, fh: int) -> None:
        self._inodes.release(fh)

    @fuse_handler("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> int:
        if inode == ROOT_INODE:
            return ROOT_FH
        _, node = self._inodes.resolve(inode)
        if node.kind is not NodeKind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._inodes.open(inode)

    @fuse_handler("readdir", by_fh=True)
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh == ROOT_FH:
            # Offsets are slot+1: stable while layers come and go.
            for slot, state in sorted(self._inodes.by_slot.items()):
                if slot < start_id or state.removed:
                    continue
                ino = state.table.root_inode
                name = os.fsencode(state.layer_id)
                if not pyfuse3.readdir_reply(token, name, self._attributes(ino), slot + 1):
                    return
                self._inodes.remember(ino)  # readdirplus replies count as lookups
            return
        h = self._inodes.handle(fh)
        names, inos = h.layer.table.listing(h.inode)
        # Offsets are index+1 in the sorted, immutable child list: trivially resumable.
        for i in range(start_id, len(names)):
            attrs = node_attributes(inos[i], h.layer.table.node(inos[i]))
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]), attrs, i + 1):
                return
            self._inodes.remember(inos[i])

    @fuse_handler("releasedir", by_fh=True)
    async def releasedir(self, fh: int) -> None:
        if fh != ROOT_FH:
            self._inodes.release(fh)

    @fuse_handler("getxattr")
    async def getxattr(
        self, inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> bytes:
        if inode == ROOT_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        _, node = self._inodes.resolve(inode)
        value = node.xattrs.get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_handler("listxattr")
    async def listxattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> Sequence[bytes]:
        if inode == ROOT_INODE:
            return []
        _, node = self._inodes.resolve(inode)
        return [os.fsencode(k) for k in node.xattrs]

    async def statfs(self, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.StatvfsData:
        # overlayfs refuses a lowerdir whose filesystem cannot answer statfs.
        s = pyfuse3.StatvfsData()
        try:
            layers = list(self._inodes.active.values())
            size = sum(st.table.total_size for st in layers)
            files = sum(len(st.table.nodes) for st in layers)
        except Exception:
            log.exception("fuse statfs: bookkeeping failed")
            size, files = 0, 0
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = max(1, (size + BLOCK - 1) // BLOCK)
        s.f_bfree = s.f_bavail = 0  # read-only: nothing is free to write
        s.f_files = max(1, files + 1)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s


def _invalidate_root_entry(name: bytes) -> None:
    try:
        pyfuse3.invalidate_entry(ROOT_INODE, name)
    except FileNotFoundError:
        pass  # the kernel never looked it up
    except OSError as exc:
        log.warning("fuse: invalidating layer entry %r failed: %s", name, exc)
