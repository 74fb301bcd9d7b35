"""Startup profiles: the files a container read at startup, in order, one path per line.

``snapfs run --record-profile FILE`` records through the FUSE mount (``LayerFS``) which
(layer, path) pairs were opened or read; :func:`merge_accesses` turns them into the paths of
the container's merged view, and ``snapfs convert --prioritize FILE`` puts those files first
in their layers, before the eStargz landmark. The file format (one path per line, a header
comment) is ``content.profilefile``'s, which both sides use. Only lazy layers are seen: a
file served from a native layer never reaches FUSE, so it is not listed; a materialised
layer is served through FUSE again while a recording needs it (:class:`FuseHolder`): until
the recorded container's mount uses its FUSE directory, so that containers started after it
(while it records) get the plain directory (the hot path) again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from content.errors import NotFound
from snapfs.fuse import LayerFS
from snapfs.fuse.inodes import Access
from snapfs.fuse.view import Node, NodeKind
from snapfs.lazy.in_use import dir_users
from snapfs.lazy.mount import LayerMount, StopRecording

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
MOUNTED_POLL = 0.2  # seconds between looks for the recorded container's mount


def covers(root: Node, path: str) -> bool:
    """Whether a layer (its tree ``root``) hides ``path`` of the layers below it in an
    overlay: it holds the path itself (a whiteout included), an opaque directory above it,
    or a non-directory where the path needs a directory. Pure."""
    node = root
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if node.kind is not NodeKind.DIR:
            return True  # a file or symlink in this layer replaces the directory below
        if i > 0 and any(node.xattrs.get(k) == b"y" for k in OPAQUE_XATTRS):
            return True
        child = node.children.get(part)
        if child is None:
            return False
        node = child
    return True


def merge_accesses(accesses: Sequence[Access], chain: Sequence[tuple[str, Node]]) -> list[str]:
    """The paths, in first-access order, that ``accesses`` read through the merged view of
    ``chain`` — (layer id, tree) pairs, bottom layer first. An access to a layer outside the
    chain, or to a path an upper layer of the chain hides (another container, sharing the
    lower layer, read it), is not part of this view. Pure."""
    index = {layer_id: i for i, (layer_id, _) in enumerate(chain)}
    out: dict[str, None] = {}
    for access in accesses:
        i = index.get(access.layer_id)
        if i is None or access.path in out:
            continue
        if any(covers(root, access.path) for _, root in chain[i + 1:]):
            continue
        out[access.path] = None
    return list(out)


class FuseHolder(Protocol):
    """What a recording needs of ``snapfs.lazy.layers.LazyLayers``: materialised layers
    served through FUSE while it records (else their files never reach it), the mount that
    records (this process's or a FUSE server's), and the layers' trees."""

    @property
    def mount(self) -> LayerMount: ...

    def layer_root(self, ident: str) -> Node: ...

    async def hold_fuse(self, idents: Sequence[str]) -> None: ...

    def release_fuse(self, idents: Sequence[str]) -> None: ...


class LocalRecording:
    """A recording on the mount of ``layers`` (a container's, bottom first), from
    construction until :meth:`stop`: ``LocalRecording(fs, layers)`` on a ``LayerFS`` of this
    process, or :meth:`start` on a :class:`FuseHolder`, which also keeps the layers served
    through FUSE — mounts made meanwhile use their FUSE directories, materialised or not —
    until :meth:`stop`, or, with a ``nursery``, until a mount uses each one (the recorded
    container's: the FUSE directory then stays for as long as that mount uses it)."""

    def __init__(self, fs: LayerFS, layers: Sequence[str]) -> None:
        recorder = fs.start_recording(list(layers))

        async def stop() -> list[Access]:
            return fs.stop_recording(recorder)

        self._setup(layers, stop, fs.layer_root, None)

    def _setup(self, layers: Sequence[str], stop: StopRecording, root: Callable[[str], Node],
               holder: FuseHolder | None) -> None:
        self._layers = list(layers)
        self._stop = stop
        self._root = root
        self._holder = holder
        self._held = list(layers) if holder is not None else []
        self._watch = trio.CancelScope()
        self._paths: list[str] | None = None

    @classmethod
    async def start(cls, holder: FuseHolder, layers: Sequence[str], *,
                    nursery: trio.Nursery | None = None) -> LocalRecording:
        await holder.hold_fuse(layers)
        try:
            stop = await holder.mount.record(list(layers))
        except BaseException:
            holder.release_fuse(layers)
            raise
        self = cls.__new__(cls)
        self._setup(layers, stop, holder.layer_root, holder)
        if nursery is not None:
            # Counted before the recorded container's Prepare returns: its mount comes after.
            before = {ident: await trio.to_thread.run_sync(
                dir_users, holder.mount.path_of(ident), ident) for ident in layers}
            nursery.start_soon(self._release_once_mounted, holder, before)
        return self

    async def _release_once_mounted(self, holder: FuseHolder, before: dict[str, int]) -> None:
        """Release each layer's hold as soon as a new mount uses its FUSE directory (other
        images' containers may use it already): the recorded container has its rootfs, and
        later ones need not read through FUSE."""
        with self._watch:
            while self._held:
                await trio.sleep(MOUNTED_POLL)
                for ident in list(self._held):
                    now = await trio.to_thread.run_sync(
                        dir_users, holder.mount.path_of(ident), ident)
                    if now > before[ident]:
                        self._held.remove(ident)
                        holder.release_fuse([ident])

    async def stop(self) -> list[str]:
        """End the recording (once; later calls return the same) and merge what it saw."""
        if self._paths is None:
            try:
                accesses = await self._stop()
            finally:
                self._watch.cancel()
                if self._holder is not None:
                    self._holder.release_fuse(self._held)
                    self._held = []
                    self._holder = None
            chain = []
            for layer_id in self._layers:
                try:
                    chain.append((layer_id, self._root(layer_id)))
                except NotFound:
                    continue  # a native layer: FUSE never saw it
            self._paths = merge_accesses(accesses, chain)
        return list(self._paths)

    async def aclose(self) -> None:
        await self.stop()


__all__ = ["FuseHolder", "LocalRecording", "covers", "merge_accesses"]
