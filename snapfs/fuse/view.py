"""The seam between the FUSE filesystem and a lazy layer: a tree of frozen nodes plus ``read``.

The formats code (eStargz / zstd:chunked TOCs, the chunk fetcher) implements ``LayerView``;
the filesystem knows nothing else about a layer. ``build_tree`` turns a flat, tar-ordered
list of ``Entry`` records into the tree, presenting OCI whiteouts the way kernel overlayfs
expects of a lowerdir:

    .wh.<name>        ->  <name>: a character device 0/0 (hidden from the listing as .wh.*)
    .wh..wh..opq      ->  xattr trusted.overlay.opaque=y (user.overlay.opaque with userxattr)
                          on the containing directory
    .wh..wh.<other>   ->  dropped (aufs bookkeeping)

Must not do I/O itself: reads go through the layer's ``LayerView``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from content.errors import InvalidArgument

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# eStargz prefetch landmarks are format metadata, never part of the layer's filesystem.
LANDMARKS = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})


class NodeKind(StrEnum):
    DIR = "dir"
    REG = "reg"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCK = "sock"


@dataclass(frozen=True, slots=True)
class Node:
    """One file of a layer as the filesystem presents it.

    ``mode`` holds permission bits only (``& 0o7777``); the type comes from ``kind``.
    ``path`` is the node's own path in the layer ("" for the root). ``link_group`` is the
    path of the entry that owns the file's identity and content: its own path, except for
    hardlinks, which carry their target's. Nodes sharing a ``link_group`` share an inode.
    """

    name: str
    kind: NodeKind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    rdev: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    children: Mapping[str, Node] = field(default_factory=dict)
    nlink: int = 1
    path: str = ""
    link_group: str = ""


class LayerView(Protocol):
    """One lazy layer, as the filesystem sees it."""

    @property
    def layer_id(self) -> str: ...

    def root(self) -> Node: ...

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of ``node`` (a regular file), fetched and verified.

        ``offset + size`` never exceeds ``node.size``. Raises content.errors on failure.
        """
        ...


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar/TOC record. ``type`` uses the TOC vocabulary (dir, reg, symlink, hardlink,
    char, block, fifo, sock; ``chunk`` records are ignored). For hardlinks ``linkname`` is
    the target's path in the layer."""

    name: str
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


def opaque_xattr(userxattr: bool) -> str:
    return "user.overlay.opaque" if userxattr else "trusted.overlay.opaque"


@dataclass(slots=True)
class _Draft:
    node: Node  # attributes only; children live in ``children`` until frozen
    children: dict[str, _Draft] = field(default_factory=dict)


def _split(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"layer entry {name!r}: path escapes the layer root")
    return parts


def _implicit_dir(name: str, path: str) -> _Draft:
    return _Draft(Node(name=name, kind=NodeKind.DIR, mode=0o755, path=path, link_group=path))


def _parent(root: _Draft, parts: list[str], what: str) -> _Draft:
    """The draft directory holding ``parts[-1]``, creating missing parents as tar does."""
    cur = root
    for i, part in enumerate(parts[:-1]):
        nxt = cur.children.get(part)
        if nxt is None:
            nxt = _implicit_dir(part, "/".join(parts[: i + 1]))
            cur.children[part] = nxt
        elif nxt.node.kind is not NodeKind.DIR:
            raise InvalidArgument(f"layer entry {what!r}: parent {part!r} is not a directory")
        cur = nxt
    return cur


def _find(root: _Draft, parts: list[str]) -> _Draft | None:
    cur: _Draft | None = root
    for part in parts:
        if cur is None:
            return None
        cur = cur.children.get(part)
    return cur


def _node_of(e: Entry, name: str, path: str) -> Node:
    try:
        kind = NodeKind(e.type)
    except ValueError:
        raise InvalidArgument(f"layer entry {e.name!r}: unknown type {e.type!r}") from None
    size = e.size if kind is NodeKind.REG else 0
    if kind is NodeKind.SYMLINK:
        size = len(os.fsencode(e.linkname))  # what lstat reports for a symlink
    rdev = os.makedev(e.devmajor, e.devminor) if kind in (NodeKind.CHAR, NodeKind.BLOCK) else 0
    return Node(
        name=name, kind=kind, mode=e.mode & 0o7777, uid=e.uid, gid=e.gid, size=size,
        mtime_ns=e.mtime_ns, linkname=e.linkname if kind is NodeKind.SYMLINK else "",
        rdev=rdev, xattrs=dict(e.xattrs), path=path, link_group=path,
    )


def _place(root: _Draft, parts: list[str], node: Node, what: str) -> None:
    parent = _parent(root, parts, what)
    old = parent.children.get(parts[-1])
    if old is not None and old.node.kind is NodeKind.DIR and node.kind is NodeKind.DIR:
        old.node = node  # a later dir record updates attributes and keeps the contents
    else:
        parent.children[parts[-1]] = _Draft(node)


def _add(root: _Draft, e: Entry, opaque: set[str]) -> None:
    parts = _split(e.name)
    if not parts:
        if e.type == "dir":  # the "./" record: attributes of the layer root
            root.node = _node_of(e, "", "")
        return
    base = parts[-1]
    if base == OPAQUE_MARKER:
        _parent(root, parts, e.name)
        opaque.add("/".join(parts[:-1]))
        return
    if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        return
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX):]
        if not target or target in (".", ".."):
            raise InvalidArgument(f"layer entry {e.name!r}: whiteout without a name")
        path = "/".join([*parts[:-1], target])
        node = Node(name=target, kind=NodeKind.CHAR, mode=0, uid=e.uid, gid=e.gid,
                    mtime_ns=e.mtime_ns, rdev=0, path=path, link_group=path)
        _place(root, [*parts[:-1], target], node, e.name)
        return
    if len(parts) == 1 and base in LANDMARKS:
        return
    path = "/".join(parts)
    if e.type == "hardlink":
        linked = _find(root, _split(e.linkname))
        if linked is None or linked.node.kind is NodeKind.DIR:
            raise InvalidArgument(
                f"layer entry {e.name!r}: hardlink target {e.linkname!r} is missing or a directory"
            )
        _place(root, parts, replace(linked.node, name=base, path=path), e.name)
        return
    _place(root, parts, _node_of(e, base, path), e.name)


def _count_links(root: _Draft, counts: Counter[str]) -> None:
    # Iterative: a deep tree must not hit the recursion limit here (``_freeze`` reports it).
    stack = [root]
    while stack:
        for child in stack.pop().children.values():
            if child.node.kind is NodeKind.DIR:
                stack.append(child)
            else:
                counts[child.node.link_group] += 1


def _freeze(d: _Draft, links: Counter[str], opaque: set[str], xattr: str) -> Node:
    n = d.node
    if n.kind is not NodeKind.DIR:
        nlink = links[n.link_group]
        # Most files have one link: no copy (a layer of 10k files builds twice as fast).
        return n if nlink == n.nlink else replace(n, nlink=nlink)
    children = {
        name: _freeze(d.children[name], links, opaque, xattr) for name in sorted(d.children)
    }
    xattrs = dict(n.xattrs)
    if n.path in opaque:
        xattrs[xattr] = b"y"
    subdirs = sum(1 for c in children.values() if c.kind is NodeKind.DIR)
    return replace(n, children=children, xattrs=xattrs, nlink=2 + subdirs)


def build_tree(entries: Iterable[Entry], *, userxattr: bool = False,
               left_out: list[str] | None = None) -> Node:
    """The layer's tree from its entries in tar order (later records win, as in extraction).

    Pure. An entry whose path escapes the root, of an unknown type, under a file used as a
    directory, or a hardlink whose target is missing raises InvalidArgument; with
    ``left_out`` that entry is left out instead and the reason appended (one malformed
    entry costs only itself). A tree nested too deeply to build raises InvalidArgument.
    """
    root = _implicit_dir("", "")
    opaque: set[str] = set()
    for e in entries:
        if e.type == "chunk":  # continuation records of a chunked file
            continue
        try:
            _add(root, e, opaque)
        except InvalidArgument as exc:
            if left_out is None:
                raise
            left_out.append(str(exc))
    links: Counter[str] = Counter()
    _count_links(root, links)
    try:
        return _freeze(root, links, opaque, opaque_xattr(userxattr))
    except RecursionError:
        raise InvalidArgument("layer tree is nested too deeply") from None


def walk(root: Node) -> Iterable[Node]:
    """Every node, pre-order, children in name order: the stable order inode numbers follow."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(node.children.values())))
