"""The FUSE mount against the real kernel: what a reader of <root>/fuse/<layer>/ sees."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from content.errors import NotFound, Unavailable
from snapfs.fuse import Entry, Node, NodeKind, clear_stale_mount
from snapfs.fuse.session import READAHEAD_KB
from snapfs.fuse.view import walk
from snapfs.sys.mountinfo import is_mounted, mount_device
from tests.snapfs.fuse_memlayer import (
    BIG_SIZE,
    blocking,
    mem_layer,
    need_fuse,
    open_mounted,
    sample_files,
)

TYPE = {
    NodeKind.DIR: stat.S_IFDIR, NodeKind.REG: stat.S_IFREG, NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.CHAR: stat.S_IFCHR, NodeKind.FIFO: stat.S_IFIFO,
}


def _observe(top: Path, tree: Node) -> list[str]:
    """Compare everything stat/readdir/readlink/read/xattr report with the tree."""
    problems: list[str] = []
    inode_of: dict[str, int] = {}
    for node in walk(tree):
        p = top / node.path
        st = os.lstat(p)
        got = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
               st.st_mtime_ns, st.st_nlink, st.st_rdev)
        want = (TYPE[node.kind], node.mode, node.uid, node.gid, node.mtime_ns, node.nlink,
                node.rdev)
        if got != want:
            problems.append(f"{node.path}: stat {got} != {want}")
        if node.kind is not NodeKind.DIR and st.st_size != node.size:
            problems.append(f"{node.path}: size {st.st_size} != {node.size}")
        if inode_of.setdefault(node.link_group, st.st_ino) != st.st_ino:
            problems.append(f"{node.path}: hardlink has its own inode")
        if node.kind is NodeKind.DIR and sorted(os.listdir(p)) != list(node.children):
            problems.append(f"{node.path}: listing {sorted(os.listdir(p))}")
        if node.kind is NodeKind.SYMLINK and os.readlink(p) != node.linkname:
            problems.append(f"{node.path}: readlink {os.readlink(p)!r}")
        xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                  for k in os.listxattr(p, follow_symlinks=False)}
        if xattrs != dict(node.xattrs):
            problems.append(f"{node.path}: xattrs {xattrs}")
    return problems


async def test_mounted_layer_matches_its_tree(tmp_path: Path) -> None:
    need_fuse()
    layer = mem_layer("sha256:aaaa", sample_files())
    async with open_mounted(tmp_path / "fuse") as fs:
        top = fs.add_layer(layer)
        assert top == tmp_path / "fuse" / "sha256:aaaa"
        assert await blocking(lambda: os.listdir(tmp_path / "fuse")) == ["sha256:aaaa"]
        assert await blocking(lambda: _observe(top, layer.tree)) == []

        for node in walk(layer.tree):
            if node.kind is NodeKind.REG:
                got = await blocking((top / node.path).read_bytes)
                assert got == layer.contents[node.link_group], node.path
        assert await blocking(lambda: (top / "bin/sh").read_bytes()) == (
            layer.contents["bin/busybox"])
        # Whiteouts as overlayfs expects them; the .wh.* names themselves are hidden.
        gone = await blocking(lambda: os.lstat(top / "gone"))
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert await blocking(lambda: os.getxattr(top / "opq", "trusted.overlay.opaque")) == b"y"
        assert not any(n.startswith(".wh.") for n in await blocking(lambda: os.listdir(top)))

        with pytest.raises(OSError) as info:
            await blocking(lambda: os.getxattr(top / "etc/passwd", "user.nothing"))
        assert info.value.errno == errno.ENODATA
        with pytest.raises(FileNotFoundError):
            await blocking(lambda: os.stat(top / "etc/nothing"))
        with pytest.raises(OSError) as info:
            await blocking(lambda: open(top / "etc/passwd", "r+b"))  # noqa: SIM115
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            await blocking(lambda: (top / "etc/new").write_bytes(b"x"))
        assert info.value.errno == errno.EROFS
        vfs = await blocking(lambda: os.statvfs(top))
        assert vfs.f_blocks > 0 and vfs.f_bsize > 0 and vfs.f_files > 0


async def test_reads_reach_the_view_once_and_are_counted(tmp_path: Path) -> None:
    need_fuse()
    layer = mem_layer("big", sample_files())
    async with open_mounted(tmp_path / "fuse") as fs:
        top = fs.add_layer(layer)
        data = await blocking(lambda: (top / "data/big.bin").read_bytes())
        assert data == layer.contents["data/big.bin"]
        ranges = sorted((off, size) for path, off, size in layer.reads if path == "data/big.bin")
        # The view was asked for exactly the file, each byte once, in bounded requests.
        pos = 0
        for off, size in ranges:
            assert off == pos and 0 < size <= 1024 * 1024
            pos += size
        assert pos == BIG_SIZE
        calls = len(layer.reads)
        # keep_cache: reading again (even through a new open) is served by the page cache.
        assert await blocking(lambda: (top / "data/big.bin").read_bytes()) == data
        assert len(layer.reads) == calls
        # An empty file never reaches the view.
        assert await blocking(lambda: (top / "data/empty").read_bytes()) == b""
        assert len(layer.reads) == calls

        stats = fs.stats("big")
        assert stats.bytes_read == BIG_SIZE
        assert stats.requests["read"] >= len(ranges)
        assert stats.requests["lookup"] >= 2 and stats.healthy


async def test_failed_read_is_eio_and_the_mount_survives(tmp_path: Path) -> None:
    need_fuse()
    layer = mem_layer("flaky", sample_files())
    layer.failures["etc/passwd"] = Unavailable("layer flaky: registry 127.0.0.1 answered 503")
    async with open_mounted(tmp_path / "fuse") as fs:
        top = fs.add_layer(layer)
        with pytest.raises(OSError) as info:
            await blocking(lambda: (top / "etc/passwd").read_bytes())
        assert info.value.errno == errno.EIO
        # Other files read fine, and a known error does not condemn the layer.
        assert await blocking(lambda: (top / "opq/kept").read_bytes()) == b"kept\n"
        assert fs.stats("flaky").healthy
        # Once the fetch works again, the file reads.
        del layer.failures["etc/passwd"]
        assert await blocking(lambda: (top / "etc/passwd").read_bytes()) == (
            layer.contents["etc/passwd"])

        # A bug in the view (an unexpected exception) is EIO too, for that read alone: the
        # layer is reported unhealthy until a read succeeds, and its other files still
        # read through the view (only a verification failure takes a layer out of service).
        layer.failures["etc/caps"] = KeyError("bug")
        with pytest.raises(OSError) as info:
            await blocking(lambda: (top / "etc/caps").read_bytes())
        assert info.value.errno == errno.EIO
        assert not fs.stats("flaky").healthy
        before = len(layer.reads)
        assert await blocking(lambda: (top / "usr/lib/libc.so").read_bytes()) == b"libc" * 100
        assert len(layer.reads) > before and fs.stats("flaky").healthy
        # Other layers are untouched.
        other = mem_layer("other", sample_files())
        top2 = fs.add_layer(other)
        assert await blocking(lambda: (top2 / "usr/lib/libc.so").read_bytes()) == b"libc" * 100


async def test_readdir_of_ten_thousand_entries(tmp_path: Path) -> None:
    need_fuse()
    names = [f"f{i:05d}" for i in range(10_000)]
    files = [(Entry("many/", "dir", 0o755), b"")]
    files += [(Entry(f"many/{n}", "reg", 0o644), n.encode()) for n in names]
    layer = mem_layer("many", files)
    async with open_mounted(tmp_path / "fuse") as fs:
        top = fs.add_layer(layer)
        # Listing needs many readdir requests, each resuming at the previous offset.
        assert await blocking(lambda: sorted(os.listdir(top / "many"))) == names
        assert fs.stats("many").requests["readdir"] > 2
        assert await blocking(lambda: (top / "many/f09999").read_bytes()) == b"f09999"


async def test_layers_come_and_go_while_mounted(tmp_path: Path) -> None:
    need_fuse()
    mnt = tmp_path / "fuse"
    a = mem_layer("a", sample_files())
    b = mem_layer("b", [(Entry("only-b", "reg", 0o644), b"b\n")])
    async with open_mounted(mnt) as fs:
        top_a = fs.add_layer(a)
        assert await blocking(lambda: (top_a / "etc/passwd").read_bytes()) == (
            a.contents["etc/passwd"])
        top_b = fs.add_layer(b)
        assert await blocking(lambda: sorted(os.listdir(mnt))) == ["a", "b"]
        assert await blocking(lambda: (top_b / "only-b").read_bytes()) == b"b\n"

        # A file open while its layer is removed keeps reading until it is closed.
        f = await blocking(lambda: open(top_a / "data/big.bin", "rb"))  # noqa: SIM115
        try:
            await fs.remove_layer("a")
            assert await blocking(lambda: os.listdir(mnt)) == ["b"]
            assert not await blocking(top_a.exists)
            assert await blocking(lambda: f.read(4096)) == a.contents["data/big.bin"][:4096]
        finally:
            await blocking(f.close)
        with pytest.raises(NotFound):
            fs.stats("a")
        with pytest.raises(NotFound):
            await fs.remove_layer("a")

        # The same id can come back (a new layer object, fresh inodes).
        a2 = mem_layer("a", [(Entry("new", "reg", 0o644), b"new\n")])
        fs.add_layer(a2)
        assert await blocking(lambda: os.listdir(top_a)) == ["new"]
        assert await blocking(lambda: (top_a / "new").read_bytes()) == b"new\n"
    # Unmounted at the end of the block.
    assert not await blocking(lambda: is_mounted(mnt))


async def test_unmounted_even_when_the_body_fails(tmp_path: Path) -> None:
    need_fuse()
    mnt = tmp_path / "fuse"
    with pytest.raises(ExceptionGroup) as failed:
        async with open_mounted(mnt) as fs:
            top = fs.add_layer(mem_layer("a", sample_files()))
            assert await blocking(lambda: is_mounted(mnt))
            f = await blocking(lambda: open(top / "etc/passwd", "rb"))  # noqa: SIM115
            try:
                raise RuntimeError("boom")
            finally:
                await blocking(f.close)  # close() sends FLUSH: never on the serving loop
    assert failed.group_contains(RuntimeError, match="boom", depth=None)
    assert not await blocking(lambda: is_mounted(mnt))
    # The process can serve a new mount afterwards (pyfuse3's session was closed).
    async with open_mounted(mnt) as fs:
        top = fs.add_layer(mem_layer("a", sample_files()))
        assert await blocking((top / "opq/kept").read_bytes) == b"kept\n"


_DYING_SERVER = """
import sys, trio
from pathlib import Path
from snapfs.fuse import LayerFS, serve_fuse
from tests.snapfs.fuse_memlayer import mem_layer, sample_files

async def main() -> None:
    mp = Path(sys.argv[1])
    fs = LayerFS(mp)
    fs.add_layer(mem_layer("dead", sample_files()))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_fuse, fs, mp)
        print("ready", flush=True)

trio.run(main)
"""


async def test_stale_mount_from_a_crashed_server_is_replaced(tmp_path: Path) -> None:
    need_fuse()
    mnt = tmp_path / "fuse"
    repo = Path(__file__).resolve().parents[2]
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _DYING_SERVER, str(mnt)], cwd=repo, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert b"ready" in await proc.stdout.receive_some(100)
        assert await blocking(lambda: os.listdir(mnt)) == ["dead"]
        proc.kill()  # a crash: no unmount
        await proc.wait()
        with pytest.raises(OSError) as info:
            await blocking(lambda: os.listdir(mnt))
        assert info.value.errno == errno.ENOTCONN

        async with open_mounted(mnt) as fs:
            assert await blocking(lambda: os.listdir(mnt)) == []
            fs.add_layer(mem_layer("alive", sample_files()))
            assert await blocking(lambda: os.listdir(mnt)) == ["alive"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await clear_stale_mount(mnt)
    assert not await blocking(lambda: is_mounted(mnt))


def test_mount_device_from_mountinfo() -> None:
    info = (
        "22 1 254:1 / / rw,relatime - ext4 /dev/vda rw\n"
        "42 22 0:39 / /var/tmp/a\\040b/fuse ro,nosuid - fuse.snapfs snapfs ro,user_id=0\n"
        "43 22 0:40 / /var/tmp/c ro - fuse.snapfs snapfs ro\n"
        "44 42 0:41 / /var/tmp/c ro - fuse.snapfs snapfs ro\n"  # mounted over: the last wins
    )
    assert mount_device(info, Path("/var/tmp/a b/fuse")) == "0:39"
    assert mount_device(info, Path("/var/tmp/c")) == "0:41"
    assert mount_device(info, Path("/var/tmp/none")) is None


async def test_sequential_reads_arrive_in_large_requests(tmp_path: Path) -> None:
    # 128 KiB requests (the kernel's default readahead) cost a lazy layer most of its
    # throughput (issue #7); as root the mount's readahead is raised so they reach 1 MiB.
    need_fuse()
    layer = mem_layer("big", sample_files())
    async with open_mounted(tmp_path / "fuse") as fs:
        top = fs.add_layer(layer)
        dev = await blocking(lambda: mount_device(
            Path("/proc/self/mountinfo").read_text(), tmp_path / "fuse"))
        assert dev is not None
        assert Path("/sys/class/bdi", dev, "read_ahead_kb").read_text().strip() == str(
            READAHEAD_KB)

        def read_in_mib() -> bytes:
            with open(top / "data/big.bin", "rb", buffering=0) as f:
                return b"".join(iter(lambda: f.read(1 << 20), b""))

        assert await blocking(read_in_mib) == layer.contents["data/big.bin"]
        sizes = [size for path, _, size in layer.reads if path == "data/big.bin"]
        assert sum(sizes) == BIG_SIZE and max(sizes) == 1 << 20
        assert len(sizes) <= BIG_SIZE // (1 << 20) + 1
