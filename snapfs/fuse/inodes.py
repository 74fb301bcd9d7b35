"""Inode bookkeeping for the one FUSE mount: layers, inode numbers, lookup counts, handles.

Inode numbers (and the attributes the kernel sees for them) are deterministic per layer::

    inode = slot << 32 | index
            │            └── position of the node in a pre-order walk, children by name
            │                (hardlinks take the index of their group's first member)
            └── the layer's slot, assigned when it is added, never reused while the mount
                lives (the kernel may still hold inodes of a removed layer)

Inode 1 is the mount root (slot 0), which lists the layers. A removed layer stays
resolvable until the kernel has forgotten all its inodes and every handle is released,
so processes with open files (or an overlay on top) keep working until they let go.

Must not do I/O: it maps inode numbers to nodes and back, and counts lookups.
"""

from __future__ import annotations

import itertools
import stat
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NewType

import pyfuse3

from content.errors import AlreadyExists, InvalidArgument, NotFound
from snapfs.fuse.view import LayerView, Node, NodeKind, walk

Inode = NewType("Inode", int)
Fh = NewType("Fh", int)

ROOT_INODE = Inode(1)
SLOT_SHIFT = 32
_INDEX_MASK = (1 << SLOT_SHIFT) - 1
CONTENT_TIMEOUT = 24 * 3600.0  # layer contents never change while mounted
BLOCK = 4096

_TYPE_BITS = {
    NodeKind.DIR: stat.S_IFDIR,
    NodeKind.REG: stat.S_IFREG,
    NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.CHAR: stat.S_IFCHR,
    NodeKind.BLOCK: stat.S_IFBLK,
    NodeKind.FIFO: stat.S_IFIFO,
    NodeKind.SOCK: stat.S_IFSOCK,
}


def node_attributes(ino: int, node: Node) -> pyfuse3.EntryAttributes:
    """What stat reports for ``node``; hardlinks share ``ino``, so share all of it."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    a.generation = 0
    a.entry_timeout = CONTENT_TIMEOUT
    a.attr_timeout = CONTENT_TIMEOUT
    a.st_mode = _TYPE_BITS[node.kind] | node.mode
    a.st_nlink = node.nlink
    a.st_uid = node.uid
    a.st_gid = node.gid
    a.st_rdev = node.rdev
    a.st_size = node.size
    a.st_blksize = BLOCK
    a.st_blocks = (node.size + 511) // 512
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
    return a


class LayerTable:
    """Immutable index of one layer's tree: inode numbers and directory listings."""

    def __init__(self, slot: int, root: Node) -> None:
        self.slot = slot
        self.nodes: list[Node] = []
        self.total_size = 0
        self._listing: dict[int, tuple[tuple[str, ...], tuple[Inode, ...]]] = {}
        self._by_name: dict[int, dict[str, Inode]] = {}
        self._parent: dict[int, Inode] = {0: ROOT_INODE}
        group: dict[str, int] = {}
        index_of: dict[int, int] = {}  # id(node) -> index; ``root`` keeps every node alive
        for node in walk(root):
            index = len(self.nodes)
            if node.kind is not NodeKind.DIR:
                index = group.setdefault(node.link_group, index)
            if index == len(self.nodes):
                self.nodes.append(node)
                self.total_size += node.size
            index_of[id(node)] = index
        for index, node in enumerate(self.nodes):
            if node.kind is not NodeKind.DIR:
                continue
            names = tuple(node.children)
            inos = tuple(self.inode(index_of[id(c)]) for c in node.children.values())
            self._listing[index] = (names, inos)
            self._by_name[index] = dict(zip(names, inos, strict=True))
            for c in node.children.values():
                if c.kind is NodeKind.DIR:
                    self._parent[index_of[id(c)]] = self.inode(index)

    def inode(self, index: int) -> Inode:
        return Inode(self.slot << SLOT_SHIFT | index)

    @property
    def root_inode(self) -> Inode:
        return self.inode(0)

    def node(self, ino: int) -> Node:
        index = ino & _INDEX_MASK
        if ino >> SLOT_SHIFT != self.slot or index >= len(self.nodes):
            raise NotFound(f"inode {ino}: not in layer slot {self.slot}")
        return self.nodes[index]

    def listing(self, ino: int) -> tuple[Sequence[str], Sequence[Inode]]:
        return self._listing.get(ino & _INDEX_MASK, ((), ()))

    def child(self, ino: int, name: str) -> Inode | None:
        if name == ".":
            return Inode(ino)
        if name == "..":
            return self._parent.get(ino & _INDEX_MASK)
        return self._by_name.get(ino & _INDEX_MASK, {}).get(name)


@dataclass(frozen=True, slots=True)
class LayerStats:
    """A snapshot of one layer's counters, for tests and ``snapfs status``."""

    layer_id: str
    requests: dict[str, int]
    bytes_read: int
    healthy: bool
    open_handles: int
    lookups: int


@dataclass(slots=True)
class LayerState:
    view: LayerView
    table: LayerTable
    layer_id: str
    healthy: bool = True  # False while its last request failed unexpectedly (not sticky)
    removed: bool = False
    lookups: int = 0
    handles: int = 0
    bytes_read: int = 0
    requests: Counter[str] = field(default_factory=Counter)

    def stats(self) -> LayerStats:
        return LayerStats(self.layer_id, dict(self.requests), self.bytes_read, self.healthy,
                          self.handles, self.lookups)


@dataclass(frozen=True, slots=True)
class Handle:
    layer: LayerState
    inode: Inode
    node: Node


@dataclass(frozen=True, slots=True)
class Access:
    """A regular file a recording saw opened or read: its layer and its path in the layer."""

    layer_id: str
    path: str


class AccessRecorder:
    """The regular files opened or read while it records: the first access to each
    (layer, path), in order. ``layers`` limits it to some layers (a container's image);
    None records every layer of the mount."""

    def __init__(self, layers: Collection[str] | None = None) -> None:
        self.layers = frozenset(layers) if layers is not None else None
        self.accesses: list[Access] = []
        self._seen: set[Access] = set()

    def note(self, layer_id: str, path: str) -> None:
        if self.layers is not None and layer_id not in self.layers:
            return
        access = Access(layer_id, path)
        if access not in self._seen:
            self._seen.add(access)
            self.accesses.append(access)


class Recordings:
    """The recordings in progress on one mount (``snapfs run --record-profile``).

    The kernel opens by inode, and the members of a hardlink group share one; while
    anything records, the name each such inode was last looked up by is kept, so an
    access is recorded under the path that was opened, not the group's first member.
    """

    def __init__(self) -> None:
        self.active: list[AccessRecorder] = []
        self._link_names: dict[int, str] = {}

    def start(self, layers: Collection[str] | None = None) -> AccessRecorder:
        recorder = AccessRecorder(layers)
        self.active.append(recorder)
        return recorder

    def stop(self, recorder: AccessRecorder) -> list[Access]:
        if recorder in self.active:
            self.active.remove(recorder)
        if not self.active:
            self._link_names.clear()
        return list(recorder.accesses)

    def looked_up(self, ino: int, parent: Node, name: str, node: Node) -> None:
        if self.active and node.kind is NodeKind.REG and node.nlink > 1:
            self._link_names[ino] = f"{parent.path}/{name}" if parent.path else name

    def accessed(self, layer_id: str, ino: int, node: Node) -> None:
        if not self.active or node.kind is not NodeKind.REG:
            return
        path = self._link_names.get(ino, node.path)
        for recorder in self.active:
            recorder.note(layer_id, path)


def check_layer_id(layer_id: str) -> None:
    if not layer_id or "/" in layer_id or "\0" in layer_id or layer_id in (".", ".."):
        raise InvalidArgument(f"layer {layer_id!r}: not usable as a directory name")


class Inodes:
    """Every layer of the mount, by slot and by id, with lookup counts and open handles."""

    def __init__(self) -> None:
        self._slots = itertools.count(1)
        self._fhs = itertools.count(1)
        self.by_slot: dict[int, LayerState] = {}
        self.active: dict[str, LayerState] = {}
        self.handles: dict[Fh, Handle] = {}

    def add(self, view: LayerView) -> LayerState:
        check_layer_id(view.layer_id)
        if view.layer_id in self.active:
            raise AlreadyExists(f"layer {view.layer_id}: already mounted")
        slot = next(self._slots)
        if slot >= 1 << 31:
            raise InvalidArgument(f"layer {view.layer_id}: out of inode slots")
        state = LayerState(view=view, table=LayerTable(slot, view.root()), layer_id=view.layer_id)
        self.by_slot[slot] = state
        self.active[view.layer_id] = state
        return state

    def remove(self, layer_id: str) -> LayerState:
        state = self.active.pop(layer_id, None)
        if state is None:
            raise NotFound(f"layer {layer_id}: not mounted")
        state.removed = True
        self._maybe_drop(state)
        return state

    def layer_of(self, ino: int) -> LayerState | None:
        return self.by_slot.get(ino >> SLOT_SHIFT)

    def resolve(self, ino: int) -> tuple[LayerState, Node]:
        state = self.layer_of(ino)
        if state is None:
            raise NotFound(f"inode {ino}: no such layer (removed?)")
        return state, state.table.node(ino)

    def remember(self, ino: int, count: int = 1) -> None:
        state = self.layer_of(ino)
        if state is not None:
            state.lookups += count

    def forget(self, ino: int, count: int) -> None:
        state = self.layer_of(ino)
        if state is not None:
            state.lookups = max(0, state.lookups - count)
            self._maybe_drop(state)

    def open(self, ino: int) -> Fh:
        state, node = self.resolve(ino)
        fh = Fh(next(self._fhs))
        self.handles[fh] = Handle(state, Inode(ino), node)
        state.handles += 1
        return fh

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(Fh(fh))
        if h is None:
            raise NotFound(f"file handle {fh}: not open")
        return h

    def release(self, fh: int) -> None:
        h = self.handles.pop(Fh(fh), None)
        if h is not None:
            h.layer.handles -= 1
            self._maybe_drop(h.layer)

    def _maybe_drop(self, state: LayerState) -> None:
        if state.removed and state.lookups == 0 and state.handles == 0:
            self.by_slot.pop(state.table.slot, None)
