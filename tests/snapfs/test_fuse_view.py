"""Pure logic of the FUSE layer: build_tree, inode numbering, the errno table."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest

from content.errors import DigestMismatch, Internal, InvalidArgument, NotFound, Unavailable
from snapfs.fuse import Entry, NodeKind, build_tree, errno_for
from snapfs.fuse.inodes import ROOT_INODE, SLOT_SHIFT, LayerTable
from snapfs.fuse.view import walk
from tests.snapfs.fuse_memlayer import mem_layer, sample_files


def test_whiteouts_become_what_overlayfs_expects() -> None:
    tree = build_tree([
        Entry("a/", "dir", 0o700, uid=5),
        Entry("a/.wh.x", "reg"),
        Entry("a/.wh..wh..opq", "reg"),
        Entry("a/.wh..wh.plnk", "reg"),  # aufs bookkeeping: dropped
        Entry("b/.wh..wh..opq", "reg"),  # marker before its directory record
        Entry("b/", "dir", 0o751),
    ])
    a, b = tree.children["a"], tree.children["b"]
    assert list(a.children) == ["x"]
    x = a.children["x"]
    assert (x.kind, x.rdev, x.mode) == (NodeKind.CHAR, 0, 0)
    assert a.xattrs == {"trusted.overlay.opaque": b"y"} and a.uid == 5
    assert b.xattrs == {"trusted.overlay.opaque": b"y"} and b.mode == 0o751
    user = build_tree([Entry("a/.wh..wh..opq", "reg")], userxattr=True)
    assert user.children["a"].xattrs == {"user.overlay.opaque": b"y"}


def test_hardlinks_share_identity_and_count_links() -> None:
    tree = build_tree([
        Entry("bin/busybox", "reg", 0o755, size=10, uid=3),
        Entry("bin/sh", "hardlink", linkname="bin/busybox"),
        Entry("sbin/init", "hardlink", linkname="/bin/busybox"),
    ])
    links = [tree.children["bin"].children["busybox"], tree.children["bin"].children["sh"],
             tree.children["sbin"].children["init"]]
    assert {n.link_group for n in links} == {"bin/busybox"}
    assert [(n.nlink, n.size, n.uid, n.mode) for n in links] == [(3, 10, 3, 0o755)] * 3
    assert [n.path for n in links] == ["bin/busybox", "bin/sh", "sbin/init"]


def test_tar_order_semantics() -> None:
    tree = build_tree([
        Entry("./", "dir", 0o700),
        Entry("d/f", "reg", size=1),  # implicit parent
        Entry("d/", "dir", 0o711, mtime_ns=7),  # later record updates, keeps contents
        Entry("g", "reg", size=1),
        Entry("g", "symlink", linkname="d/f"),  # later record replaces
        Entry(".prefetch.landmark", "reg", size=1),  # eStargz metadata: hidden
        Entry("f", "chunk"),
    ])
    assert tree.mode == 0o700 and list(tree.children) == ["d", "g"]
    d = tree.children["d"]
    assert (d.mode, d.mtime_ns, list(d.children)) == (0o711, 7, ["f"])
    assert tree.children["g"].kind is NodeKind.SYMLINK
    assert tree.children["g"].size == len("d/f")
    assert tree.nlink == 3  # "." , ".." and d's ".."


@pytest.mark.parametrize("entries", [
    [Entry("../etc/passwd", "reg")],
    [Entry("f", "reg"), Entry("f/g", "reg")],
    [Entry("h", "hardlink", linkname="missing")],
    [Entry("d/", "dir"), Entry("h", "hardlink", linkname="d")],
    [Entry("s", "socket?")],
])
def test_malformed_layers_are_rejected(entries: list[Entry]) -> None:
    with pytest.raises(InvalidArgument):
        build_tree(entries)


def test_inode_numbers_are_deterministic_and_hardlinks_share_them() -> None:
    layer = mem_layer("x", sample_files())
    t1, t2 = LayerTable(3, layer.tree), LayerTable(3, mem_layer("x", sample_files()).tree)
    assert t1.root_inode == 3 << SLOT_SHIFT
    names, inos = t1.listing(t1.root_inode)
    assert list(names) == list(layer.tree.children)
    assert (names, inos) == t2.listing(t2.root_inode)
    bin_ino = t1.child(t1.root_inode, "bin")
    assert bin_ino is not None
    assert t1.child(bin_ino, "sh") == t1.child(bin_ino, "busybox") == t1.child(bin_ino, "ls")
    assert t1.child(bin_ino, "..") == t1.root_inode
    assert t1.child(t1.root_inode, "..") == ROOT_INODE
    assert len(set(inos)) == len(inos)
    # One inode per file identity: every node but the two extra hardlinks.
    assert len(t1.nodes) == sum(1 for _ in walk(layer.tree)) - 2
    with pytest.raises(NotFound):
        t1.node((4 << SLOT_SHIFT) | 1)


def test_errno_table() -> None:
    assert errno_for(NotFound("x")) == errno.ENOENT
    assert errno_for(DigestMismatch("chunk", "sha256:a", "sha256:b")) == errno.EIO
    assert errno_for(Unavailable("x")) == errno.EIO
    assert errno_for(InvalidArgument("x")) == errno.EINVAL
    assert errno_for(PermissionError(errno.EPERM, "x")) == errno.EPERM
    assert errno_for(pyfuse3.FUSEError(errno.EROFS)) == errno.EROFS
    assert errno_for(Internal("x")) is None
    assert errno_for(KeyError("x")) is None
    assert os.strerror(errno.EIO)
