"""Layer tars: deterministic output that round-trips through Python's tarfile, and
directory trees (the busybox rootfs) turned into entries."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from content.errors import InvalidArgument
from content.tarlayer import Entry, build_tar, entries_from_dir
from tests.fixtures.realenv import need_root


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


SPEC = [
    Entry("etc", "dir", mode=0o755, mtime=100),
    Entry("etc/passwd", data=b"root:x:0:0\n", mode=0o644, uid=1, gid=2, mtime=200,
          xattrs={"user.bin": b"\xff\x00\x01", "user.text": b"hello"}),
    Entry("bin/su", data=b"#!", mode=0o4755),
    Entry("bin/sh", "symlink", linkname="/bin/busybox"),
    Entry("bin/link", "hardlink", linkname="bin/su"),
    Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
    Entry("dev/sda", "block", mode=0o660, devmajor=8, devminor=0),
    Entry("run/fifo", "fifo", mode=0o600),
    Entry("etc/old", "whiteout"),
    Entry("top", "whiteout"),
    Entry("var/cache", "opaque"),
]


def test_build_tar_round_trips_through_tarfile() -> None:
    members = _members(build_tar(SPEC))
    passwd = members["etc/passwd"]
    assert passwd.isreg() and (passwd.uid, passwd.gid, passwd.mtime) == (1, 2, 200)
    assert passwd.mode == 0o644
    assert passwd.pax_headers["SCHILY.xattr.user.text"] == "hello"
    raw = passwd.pax_headers["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape")
    assert raw == b"\xff\x00\x01"
    assert members["etc"].isdir() and members["etc"].mode == 0o755
    assert members["bin/su"].mode == 0o4755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["bin/link"].islnk() and members["bin/link"].linkname == "bin/su"
    assert members["dev/null"].ischr()
    assert (members["dev/null"].devmajor, members["dev/null"].devminor) == (1, 3)
    assert members["dev/sda"].isblk() and members["dev/sda"].devmajor == 8
    assert members["run/fifo"].isfifo()
    assert members["etc/.wh.old"].isreg() and members["etc/.wh.old"].size == 0
    assert ".wh.top" in members
    assert "var/cache/.wh..wh..opq" in members
    with tarfile.open(fileobj=io.BytesIO(build_tar(SPEC))) as tf:
        f = tf.extractfile("etc/passwd")
        assert f is not None and f.read() == b"root:x:0:0\n"


def test_build_tar_is_deterministic_and_keeps_order() -> None:
    assert build_tar(SPEC) == build_tar(list(SPEC))
    names = list(_members(build_tar(SPEC)))
    assert names[0] == "etc" and names[-1] == "var/cache/.wh..wh..opq"
    assert build_tar([Entry("a", data=b"1")]) != build_tar([Entry("a", data=b"2")])


def test_build_tar_rejects_incomplete_entries() -> None:
    with pytest.raises(InvalidArgument, match="without linkname"):
        build_tar([Entry("x", "symlink")])
    with pytest.raises(InvalidArgument, match="empty path"):
        build_tar([Entry("", "file")])


def test_entries_from_dir_preserves_tree(tmp_path: Path) -> None:
    need_root("chown to arbitrary owners")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_bytes(b"data")
    os.chown(root / "sub" / "f", 12, 34)
    os.chmod(root / "sub" / "f", 0o4750)
    os.link(root / "sub" / "f", root / "hard")
    os.symlink("../elsewhere", root / "sub" / "ln")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.setxattr(root / "sub" / "f", "user.k", b"v")
    os.utime(root / "sub" / "f", (5, 5))
    entries = {e.path: e for e in entries_from_dir(root)}
    assert set(entries) == {"fifo", "hard", "null", "sub", "sub/f", "sub/ln"}
    # "hard" sorts before "sub": it is the first path, so it carries the data.
    f = entries["hard"]
    assert (f.type, f.data, f.mode, f.uid, f.gid, f.mtime) == ("file", b"data", 0o4750, 12, 34, 5)
    assert f.xattrs == {"user.k": b"v"}
    assert (entries["sub/f"].type, entries["sub/f"].linkname) == ("hardlink", "hard")
    assert entries["sub/ln"].type == "symlink" and entries["sub/ln"].linkname == "../elsewhere"
    assert entries["fifo"].type == "fifo"
    assert (entries["null"].type, entries["null"].devmajor, entries["null"].devminor) == (
        "char", 1, 3)
    order = [e.path for e in entries_from_dir(root)]
    assert order.index("sub") < order.index("sub/f")


def test_busybox_tree_becomes_a_layer(busybox_tree: Path) -> None:
    members = _members(build_tar(entries_from_dir(busybox_tree)))
    assert members["bin/busybox"].isreg() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777
    assert "etc/passwd" in members
    assert build_tar(entries_from_dir(busybox_tree)) == build_tar(entries_from_dir(busybox_tree))
