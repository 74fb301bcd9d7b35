"""apply_layer as root on temporary directories: what lands on disk, overlay whiteouts,
replacement, copy-up of hardlink targets, every escape attempt refused, compression
detection, digest checks, and a real overlay mount over two applied layers."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from content.compression import CompressionName
from content.digest import digest_bytes
from content.errors import DigestMismatch, InvalidArgument
from content.image import make_layer
from content.tarlayer import Entry, build_tar
from content.unpack import ApplyResult, apply_layer
from tests.fixtures.realenv import need, need_binary, need_root


def _apply(dest: Path, entries: Sequence[Entry], compression: CompressionName = "none",
           parents: Sequence[Path] = (), userns: bool = False) -> ApplyResult:
    dest.mkdir(exist_ok=True)
    layer = make_layer(build_tar(entries), compression)
    return apply_layer(io.BytesIO(layer.blob), dest, parents=parents, userns=userns,
                       expected_diff_id=layer.diff_id)


def _raw_tar(*infos: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A tar written without build_tar's cleaning, for hostile names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755
    return info


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_files_dirs_links_devices_and_metadata(tmp_path: Path) -> None:
    need_root("chown and mknod")
    dest = tmp_path / "dest"
    result = _apply(dest, [
        Entry("etc", "dir", mode=0o750, uid=3, gid=4, mtime=1000),
        Entry("etc/conf", data=b"x=1\n", mode=0o640, uid=5, gid=6, mtime=2000,
              xattrs={"user.tag": b"\xff\x00v", "trusted.t": b"1"}),
        Entry("bin/su", data=b"#!su", mode=0o4755, uid=0, gid=0),
        Entry("bin/sgid", data=b"#!", mode=0o2711, uid=7, gid=8),
        Entry("bin/sh", "symlink", linkname="/bin/busybox", uid=9, gid=9, mtime=300),
        Entry("bin/su2", "hardlink", linkname="bin/su"),
        Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        Entry("dev/loop0", "block", mode=0o660, devmajor=7, devminor=0, gid=6),
        Entry("run/fifo", "fifo", mode=0o620),
        Entry("tmp", "dir", mode=0o1777, mtime=50),
    ])
    conf = os.stat(dest / "etc/conf")
    assert (dest / "etc/conf").read_bytes() == b"x=1\n"
    assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_gid, conf.st_mtime) == (
        0o640, 5, 6, 2000)
    assert os.getxattr(dest / "etc/conf", "user.tag") == b"\xff\x00v"
    assert os.getxattr(dest / "etc/conf", "trusted.t") == b"1"
    etc = os.stat(dest / "etc")
    # The directory's mtime survives the file created in it afterwards.
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid, etc.st_mtime) == (
        0o750, 3, 4, 1000)
    assert stat.S_IMODE(os.stat(dest / "bin/su").st_mode) == 0o4755
    sgid = os.stat(dest / "bin/sgid")
    assert (stat.S_IMODE(sgid.st_mode), sgid.st_uid, sgid.st_gid) == (0o2711, 7, 8)
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    sh = os.lstat(dest / "bin/sh")
    assert (sh.st_uid, sh.st_mtime) == (9, 300)
    assert os.stat(dest / "bin/su2").st_ino == os.stat(dest / "bin/su").st_ino
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(dest / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    fifo = os.lstat(dest / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777
    assert result.size % 512 == 0 and result.size > 0


def test_whiteout_and_opaque_become_overlay_markers(tmp_path: Path) -> None:
    need_root("mknod and trusted xattrs")
    dest = tmp_path / "dest"
    _apply(dest, [Entry("a/gone", "whiteout", uid=0), Entry("d", "opaque"),
                  Entry("d/kept", data=b"k")])
    wh = os.lstat(dest / "a/gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert not (dest / "a/.wh.gone").exists()
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"
    assert _listing(dest) == {"a", "a/gone", "d", "d/kept"}


def test_userns_uses_user_xattr_and_skips_devices(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    _apply(dest, [Entry("d", "opaque"), Entry("dev/null", "char", devmajor=1, devminor=3),
                  Entry("f", data=b"1", uid=os.getuid(), gid=os.getgid())], userns=True)
    assert os.getxattr(dest / "d", "user.overlay.opaque") == b"y"
    assert not (dest / "dev/null").exists()
    assert (dest / "f").read_bytes() == b"1"


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    _apply(dest, [
        Entry("x", data=b"file first"), Entry("x", "dir"), Entry("x/inner", data=b"i"),
        Entry("y", "dir"), Entry("y/child", data=b"c"), Entry("y", data=b"now a file"),
        Entry("z", "dir", mode=0o700), Entry("z/keep", data=b"k"), Entry("z", "dir", mode=0o755),
        Entry("l", "symlink", linkname="x"), Entry("l", data=b"replaced link"),
    ])
    assert (dest / "x/inner").read_bytes() == b"i"
    assert (dest / "y").read_bytes() == b"now a file"
    assert (dest / "z/keep").read_bytes() == b"k"  # dir over dir merges
    assert stat.S_IMODE(os.stat(dest / "z").st_mode) == 0o755
    assert not (dest / "l").is_symlink() and (dest / "l").read_bytes() == b"replaced link"


def test_hardlink_to_parent_layer_file_is_copied_up(tmp_path: Path) -> None:
    need_root("chown")
    lower, dest = tmp_path / "lower", tmp_path / "dest"
    _apply(lower, [Entry("usr", "dir", mode=0o755), Entry("usr/bin", "dir", mode=0o751, gid=7),
                   Entry("usr/bin/tool", data=b"tool!", mode=0o4711, uid=2)])
    _apply(dest, [Entry("usr/bin/alias", "hardlink", linkname="usr/bin/tool")], parents=[lower])
    assert (dest / "usr/bin/alias").read_bytes() == b"tool!"
    assert os.stat(dest / "usr/bin/alias").st_ino == os.stat(dest / "usr/bin/tool").st_ino
    tool = os.stat(dest / "usr/bin/tool")
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid) == (0o4711, 2)
    # Missing parents are made like the parent layer's (containerd's mkparent).
    created = os.stat(dest / "usr/bin")
    assert (stat.S_IMODE(created.st_mode), created.st_gid) == (0o751, 7)
    assert (lower / "usr/bin/tool").read_bytes() == b"tool!"
    with pytest.raises(InvalidArgument, match="not found"):
        _apply(tmp_path / "other", [Entry("a", "hardlink", linkname="missing")],
               parents=[lower])


def _escape(tmp_path: Path, tar: bytes, match: str) -> None:
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    before = _listing(tmp_path)
    with pytest.raises(InvalidArgument, match=match):
        apply_layer(io.BytesIO(tar), dest)
    outside = {p for p in _listing(tmp_path) - before if not p.startswith("box/dest")}
    assert outside == set()


def test_escape_dotdot(tmp_path: Path) -> None:
    _escape(tmp_path, _raw_tar((_info("../x"), b"pwned")), "escapes the layer root")
    _escape(tmp_path / "2", _raw_tar((_info("a/../../x"), b"pwned")), "escapes")


def test_escape_absolute(tmp_path: Path) -> None:
    _escape(tmp_path, _raw_tar((_info(str(tmp_path / "abs")), b"pwned")), "absolute path")


def test_escape_through_symlinked_dir_and_dotdot(tmp_path: Path) -> None:
    tar = _raw_tar((_info("dir", tarfile.SYMTYPE, "."), b""), (_info("dir/../../x"), b"pwned"))
    _escape(tmp_path, tar, "escapes")


def test_escape_through_symlink_parent_pointing_out(tmp_path: Path) -> None:
    tar = _raw_tar((_info("evil", tarfile.SYMTYPE, "../.."), b""), (_info("evil/x"), b"pwned"))
    _escape(tmp_path, tar, "leaves the layer root")
    tar = _raw_tar((_info("a", tarfile.DIRTYPE), b""),
                   (_info("a/up", tarfile.SYMTYPE, "../.."), b""), (_info("a/up/y/z"), b"pwned"))
    _escape(tmp_path / "2", tar, "leaves the layer root")


def test_absolute_symlink_parent_resolves_inside_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    tar = _raw_tar((_info("abs", tarfile.SYMTYPE, str(outside)), b""), (_info("abs/f"), b"in"))
    apply_layer(io.BytesIO(tar), dest)
    assert list(outside.iterdir()) == []
    assert (dest / str(outside).lstrip("/") / "f").read_bytes() == b"in"
    assert os.readlink(dest / "abs") == str(outside)


def test_escape_hardlink_target(tmp_path: Path) -> None:
    _escape(tmp_path, _raw_tar((_info("pw", tarfile.LNKTYPE, "../../etc/passwd"), b"")),
            "escapes")
    _escape(tmp_path / "2", _raw_tar((_info("pw", tarfile.LNKTYPE, "/etc/passwd"), b"")),
            "absolute")
    tar = _raw_tar((_info("up", tarfile.SYMTYPE, "../../../.."), b""),
                   (_info("pw", tarfile.LNKTYPE, "up/etc/passwd"), b""))
    _escape(tmp_path / "3", tar, "leaves the layer root")


def test_existing_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    dest = tmp_path / "dest"
    _apply(dest, [Entry("f", "symlink", linkname=str(victim)), Entry("f", data=b"new")])
    assert victim.read_bytes() == b"original"
    assert (dest / "f").read_bytes() == b"new" and not (dest / "f").is_symlink()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compression_detected_and_diff_id(tmp_path: Path, compression: CompressionName) -> None:
    tar = build_tar([Entry("big", data=os.urandom(3 << 20)), Entry("small", data=b"s")])
    layer = make_layer(tar, compression)
    path = tmp_path / "blob"
    path.write_bytes(layer.blob)
    result = apply_layer(path, tmp_path / "dest", expected_diff_id=digest_bytes(tar))
    assert result == ApplyResult(digest_bytes(tar), len(tar))
    assert (tmp_path / "dest/small").read_bytes() == b"s"
    assert (tmp_path / "dest/big").stat().st_size == 3 << 20


class _PipeLike:
    """Only ``read``: proves the layer is streamed, never seeked or loaded whole."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)
        self.largest = 0

    def read(self, n: int = -1) -> bytes:
        assert n >= 0, "apply_layer must read in bounded pieces"
        self.largest = max(self.largest, n)
        return self._src.read(n)


def test_multi_member_gzip_streamed(tmp_path: Path) -> None:
    # eStargz-like: each tar entry compressed as its own gzip member.
    tar = build_tar([Entry("a", data=b"A" * 10000), Entry("b", data=b"B")])
    cut = 2048
    blob = make_layer(tar[:cut], "gzip").blob + make_layer(tar[cut:], "gzip").blob
    src = _PipeLike(blob)
    result = apply_layer(src, tmp_path, expected_diff_id=digest_bytes(tar))  # type: ignore[arg-type]
    assert (tmp_path / "a").read_bytes() == b"A" * 10000
    assert (tmp_path / "b").read_bytes() == b"B"
    assert result.diff_id == digest_bytes(tar)


def test_truncated_layers_are_errors(tmp_path: Path) -> None:
    tar = build_tar([Entry("f", data=os.urandom(100_000)), Entry("g", data=b"g")])
    blob = make_layer(tar, "gzip").blob
    with pytest.raises(InvalidArgument, match="gzip stream truncated"):
        apply_layer(io.BytesIO(blob[: len(blob) - 100]), tmp_path / "a")
    with pytest.raises(InvalidArgument, match=r"truncated|unexpected end"):
        apply_layer(io.BytesIO(tar[:50_000]), tmp_path / "b")
    # Cut exactly after a member: only the missing end-of-archive marker tells.
    with pytest.raises(InvalidArgument, match="truncated"):
        apply_layer(io.BytesIO(tar[: 512 + 100_352]), tmp_path / "c")


def test_diff_id_mismatch_raises(tmp_path: Path) -> None:
    layer = make_layer(build_tar([Entry("f", data=b"1")]), "gzip")
    wrong = digest_bytes(b"something else")
    with pytest.raises(DigestMismatch) as info:
        apply_layer(io.BytesIO(layer.blob), tmp_path, expected_diff_id=wrong)
    assert info.value.expected == str(wrong) and info.value.actual == str(layer.diff_id)


async def test_overlay_mount_hides_whited_out_files(tmp_path: Path) -> None:
    need_root("overlay mount")
    need_binary("mount")
    need("overlay" in Path("/proc/filesystems").read_text(), "overlayfs in the kernel")
    up1, up2, mnt = tmp_path / "l1", tmp_path / "l2", tmp_path / "mnt"
    mnt.mkdir()
    await trio.to_thread.run_sync(lambda: _apply(up1, [
        Entry("a/keep", data=b"keep"), Entry("a/gone", data=b"gone"),
        Entry("d/old", data=b"old"), Entry("hl", data=b"linked")]))
    await trio.to_thread.run_sync(lambda: _apply(up2, [
        Entry("a/gone", "whiteout"), Entry("d", "opaque"), Entry("d/new", data=b"new"),
        Entry("hl2", "hardlink", linkname="hl")], parents=[up1]))
    await trio.run_process(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={up2}:{up1}", str(mnt)])
    try:
        assert (mnt / "a/keep").read_bytes() == b"keep"
        assert not (mnt / "a/gone").exists()
        assert sorted(os.listdir(mnt / "a")) == ["keep"]
        assert sorted(os.listdir(mnt / "d")) == ["new"]
        assert (mnt / "hl2").read_bytes() == b"linked"
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process(["umount", str(mnt)])
