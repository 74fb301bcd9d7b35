"""Lazy layers through FUSE: one pyfuse3 mount, one read-only directory per layer.

    view.py        the seam: LayerView, Node, Entry, build_tree (whiteouts for overlayfs)
    inodes.py      inode numbers, lookup counts, handles, per-layer counters
    errno_map.py   the one error → errno table and the handler decorator
    operations.py  LayerFS, the pyfuse3.Operations subclass
    mount.py       serve_fuse: mount, serve, unmount (and clear a stale mount)

Must not know where a layer's bytes come from: layers plug in through ``snapfs.fuse.view``.
"""

from __future__ import annotations

from snapfs.fuse.errno_map import errno_for
from snapfs.fuse.inodes import LayerStats
from snapfs.fuse.operations import LayerFS
from snapfs.fuse.session import clear_stale_mount, serve_fuse
from snapfs.fuse.view import Entry, LayerView, Node, NodeKind, build_tree, opaque_xattr

__all__ = [
    "Entry",
    "LayerFS",
    "LayerStats",
    "LayerView",
    "Node",
    "NodeKind",
    "build_tree",
    "clear_stale_mount",
    "errno_for",
    "opaque_xattr",
    "serve_fuse",
]
