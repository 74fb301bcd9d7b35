"""An in-memory LayerView for the FUSE tests, a sample layer, and a mount helper."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import trio

from snapfs.fuse import Entry, LayerFS, Node, build_tree, serve_fuse
from tests.fixtures.realenv import need, need_root

T = TypeVar("T")

MTIME = 1_700_000_000_123_456_789
BIG_SIZE = 5 * 1024 * 1024


def big_content() -> bytes:
    return random.Random(5).randbytes(BIG_SIZE)


@dataclass
class MemLayer:
    """A LayerView over a dict of contents keyed by the file's link_group.

    ``reads`` records every (path, offset, size) asked for; ``failures`` makes reads of a
    path raise the given exception (a fetch that fails, a chunk that does not verify)."""

    layer_id: str
    tree: Node
    contents: dict[str, bytes]
    reads: list[tuple[str, int, int]] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)

    def root(self) -> Node:
        return self.tree

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        self.reads.append((node.path, offset, size))
        await trio.lowlevel.checkpoint()
        exc = self.failures.get(node.path)
        if exc is not None:
            raise exc
        return self.contents[node.link_group][offset : offset + size]


def mem_layer(
    layer_id: str, files: Iterable[tuple[Entry, bytes]], *, userxattr: bool = False
) -> MemLayer:
    """A layer from (entry, content) pairs in tar order; content matters for reg entries."""
    pairs = list(files)
    entries = [replace(e, size=len(c)) if e.type == "reg" else e for e, c in pairs]
    tree = build_tree(entries, userxattr=userxattr)
    contents = {e.name.strip("/"): c for e, c in pairs if e.type == "reg"}
    return MemLayer(layer_id, tree, contents)


def sample_files() -> list[tuple[Entry, bytes]]:
    """Dirs, files (one of 5 MiB), symlinks, hardlinks, a char device, a fifo, xattrs,
    a whiteout and an opaque directory."""
    d, r = "dir", "reg"
    return [
        (Entry("./", d, 0o755, mtime_ns=MTIME), b""),
        (Entry("etc/", d, 0o755, mtime_ns=MTIME), b""),
        (Entry("etc/passwd", r, 0o644, mtime_ns=MTIME), b"root:x:0:0:root:/root:/bin/sh\n"),
        (Entry("etc/caps", r, 0o640, 0, 42, mtime_ns=MTIME + 1,
               xattrs={"user.comment": b"hello", "trusted.note": b"\x00\x01"}), b"caps\n"),
        (Entry("bin/", d, 0o755, mtime_ns=MTIME), b""),
        (Entry("bin/busybox", r, 0o4755, mtime_ns=MTIME), b"\x7fELF" + b"x" * 1000),
        (Entry("bin/sh", "hardlink", linkname="bin/busybox"), b""),
        (Entry("bin/ls", "hardlink", linkname="./bin/busybox"), b""),
        (Entry("usr/lib/libc.so", r, 0o755, mtime_ns=MTIME), b"libc" * 100),
        (Entry("lib", "symlink", 0o777, linkname="usr/lib", mtime_ns=MTIME), b""),
        (Entry("dev/null", "char", 0o666, devmajor=1, devminor=3, mtime_ns=MTIME), b""),
        (Entry("run/pipe", "fifo", 0o600, mtime_ns=MTIME), b""),
        (Entry("home/user/secret", r, 0o600, 1000, 1000, mtime_ns=MTIME), b"s3cret\n"),
        (Entry("data/big.bin", r, 0o644, mtime_ns=MTIME), big_content()),
        (Entry("data/empty", r, 0o644, mtime_ns=MTIME), b""),
        (Entry(".wh.gone", r, 0o644, mtime_ns=MTIME), b""),
        (Entry("opq/", d, 0o755, mtime_ns=MTIME), b""),
        (Entry("opq/.wh..wh..opq", r, 0o644), b""),
        (Entry("opq/kept", r, 0o644, mtime_ns=MTIME), b"kept\n"),
    ]


def need_fuse() -> None:
    need_root("root (FUSE mounts)")
    need(os.path.exists("/dev/fuse"), "/dev/fuse")


@asynccontextmanager
async def open_mounted(mountpoint: Path) -> AsyncIterator[LayerFS]:
    """A LayerFS served at ``mountpoint`` for the duration of the block; always unmounted."""
    fs = LayerFS(mountpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_fuse, fs, mountpoint)
        try:
            yield fs
        finally:
            nursery.cancel_scope.cancel()


async def blocking(fn: Callable[[], T]) -> T:
    """Run blocking I/O against the mount in a thread: the trio loop must stay free to
    answer the FUSE requests it causes."""
    return await trio.to_thread.run_sync(fn)
