"""Materialising a fully fetched lazy layer into a plain directory (the hot path), and finding
out whether anything still mounts a layer's directory.

A layer whose every chunk is in the chunk cache is rebuilt without the network: its tar stream
is reconstructed from the TOC entries (in TOC order, i.e. the original tar order) and the
cached chunks, and fed to ``content.unpack.apply_layer`` — the same hardened applier the native
path uses, so the directory holds exactly what native extraction gives (0/0 whiteout character
devices, opaque xattrs, hardlinks, devices, xattrs, modes and owners). Chunks are not verified
again (the cache holds only verified chunks); a chunk missing from the cache aborts the build
and the layer stays lazy. The eStargz prefetch landmarks are format metadata and are left out,
as the FUSE view hides them.

The directory is built as ``<layers>/new-<id>`` and renamed to ``<layers>/<id>`` only when
complete, so a crash or a cancellation never leaves a half-built layer in use.

:func:`dir_in_use` scans the mount table of every mount namespace (containers live in their
own) for an overlay whose lowerdir names the directory, or a bind mount of it. Everything here
is blocking I/O: run it in a worker thread. None of it touches the FUSE mount.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from content.chunkcache import ChunkCache
from content.errors import FailedPrecondition
from content.lazyformat import LazyLayer
from content.toc import TOCEntry
from content.unpack import apply_layer

SKIPPED = frozenset({".prefetch.landmark", ".no.prefetch.landmark", "stargz.index.json"})
_TYPES = {"dir": tarfile.DIRTYPE, "reg": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


class Cancelled(Exception):
    """The materialisation was asked to stop (the daemon is shutting down)."""


def _tarinfo(e: TOCEntry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.name + ("/" if e.type == "dir" else ""))
    ti.type = _TYPES[e.type]
    ti.mode = e.mode & 0o7777
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname, ti.gname = e.uname, e.gname
    ti.mtime = e.mtime_ns // 1_000_000_000 if e.mtime_ns % 1_000_000_000 == 0 \
        else e.mtime_ns / 1e9
    ti.linkname = e.linkname
    ti.devmajor, ti.devminor = e.devmajor, e.devminor
    ti.size = e.size if e.type == "reg" else 0
    if e.xattrs:
        # As content.tarlayer writes them: tarfile turns surrogate escapes back into bytes.
        ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                          for k, v in sorted(e.xattrs.items())}
    return ti


def tar_stream(layer: LazyLayer, cache: ChunkCache,
               stop: threading.Event | None = None) -> Iterator[bytes]:
    """The layer's tar stream, rebuilt from its TOC and the cached chunks (blocking).

    Raises FailedPrecondition naming the file when a chunk is not cached, ``Cancelled`` when
    ``stop`` is set."""
    for e in layer.toc.entries:
        if e.type == "chunk" or e.name in SKIPPED or e.name == "":
            continue
        if stop is not None and stop.is_set():
            raise Cancelled(f"{layer.what}: materialisation cancelled")
        yield _tarinfo(e).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if e.type != "reg" or e.size == 0:
            continue
        written = 0
        for c in layer.files.get(e.name, []):
            data = cache.get(c.digest)
            if data is None or len(data) != c.size:
                raise FailedPrecondition(f"{layer.what}: /{e.name} at {c.file_offset}: chunk "
                                         f"{c.digest.short()} is not in the cache")
            written += len(data)
            yield data
        if written != e.size:
            raise FailedPrecondition(f"{layer.what}: /{e.name}: chunks hold {written} of "
                                     f"{e.size} bytes")
        if e.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - e.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


class _IterReader(io.RawIOBase):
    """A readable stream over an iterator of byte strings."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buf = memoryview(piece)
        n = min(len(buf), len(self._buf))
        buf[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def materialize_layer(layer: LazyLayer, cache: ChunkCache, dest: Path, *,
                      userxattr: bool = False, stop: threading.Event | None = None) -> Path:
    """Build ``dest`` (``<layers>/<id>``) from the cache; returns it. Blocking.

    An existing ``dest`` is kept (a previous run finished it). On any error the temporary
    ``new-<id>`` directory is removed and the error raised: the layer stays lazy."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = dest.parent / f"new-{dest.name}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        temp.mkdir(mode=0o755)
        os.chmod(temp, 0o755)  # as a native snapshot's fs dir: the umask must not shape it
        stream = io.BufferedReader(_IterReader(tar_stream(layer, cache, stop)), 1 << 20)
        apply_layer(stream, temp, userns=userxattr)
        os.rename(temp, dest)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return dest


def remove_dir(path: Path) -> None:
    """Delete a materialised layer directory (blocking): renamed aside first, so a crash
    midway never leaves a half-deleted directory under the layer's name."""
    doomed = path.parent / f"rm-{path.name}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


__all__ = ["Cancelled", "materialize_layer", "remove_dir",
           "tar_stream"]
