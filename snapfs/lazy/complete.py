"""Completing a lazy layer: its whole blob, verified twice, unpacked into a plain directory.

The background fetch streams the compressed blob from the registry in pieces of background
priority (``snapfs.lazy.scheduler``), hashes it (the layer digest, which the manifest lists),
decompresses it and feeds the tar stream to ``content.unpack.apply_layer`` — the hardened
applier of the native path — which hashes the uncompressed stream (the diffID, which the
image config lists and the chain ID the snapshot is committed under is made of). The
directory is built as ``<layers>/new-<id>-<pid>-<random>`` (several processes may complete
the same layer at once: daemon-less commands) and renamed to ``<layers>/<id>`` only once both
digests matched (the first rename wins; the others discard theirs), so a materialised layer
holds exactly what containerd's own unpack of the same blob gives (minus eStargz's TOC and
landmark entries, which the FUSE view hides too).

A mismatch of either digest raises ``DigestMismatch`` naming both digests: the caller takes
the layer out of service. Everything here is blocking (a worker thread); each piece is
fetched on the trio loop through ``trio.from_thread``. Must not touch the chunk cache or the
FUSE mount.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from content.digest import Digest
from content.errors import DigestMismatch, InvalidArgument
from content.unpack import apply_layer
from snapfs.lazy.scheduler import PIECE
from snapfs.sys.procs import alive

FetchPiece = Callable[[int, int], bytes]  # (offset, length) -> bytes, blocking
# Format metadata the FUSE view hides, so the materialised tree leaves it out too.
SKIPPED = frozenset({".prefetch.landmark", ".no.prefetch.landmark", "stargz.index.json"})


class Cancelled(Exception):
    """The completion was asked to stop (the daemon is shutting down)."""


class BlobReader(io.RawIOBase):
    """The blob, read front to back in pieces, hashed as it goes (blocking)."""

    def __init__(self, fetch: FetchPiece, size: int, digest: Digest, what: str, *,
                 stop: threading.Event | None = None, piece: int = PIECE) -> None:
        self._fetch = fetch
        self.size = size
        self.digest = digest
        self._what = what
        self._stop = stop
        self._piece = piece
        self._pos = 0
        self._buf = memoryview(b"")
        self._hash = hashlib.new(digest.algorithm)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        if not self._buf:
            if self._pos >= self.size:
                return 0
            if self._stop is not None and self._stop.is_set():
                raise Cancelled(f"{self._what}: completion cancelled")
            n = min(self._piece, self.size - self._pos)
            data = self._fetch(self._pos, n)
            if len(data) != n:
                raise InvalidArgument(f"{self._what}: the registry sent {len(data)} of {n} "
                                      f"bytes at offset {self._pos}")
            self._hash.update(data)
            self._pos += n
            self._buf = memoryview(data)
        n = min(len(buf), len(self._buf))
        buf[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def finish(self) -> None:
        """Read (and hash) whatever the decompressor left, then verify the layer digest."""
        while self.read(self._piece):
            pass
        got = f"{self.digest.algorithm}:{self._hash.hexdigest()}"
        if got != str(self.digest):
            raise DigestMismatch(f"{self._what}: blob", str(self.digest), got)


def complete_layer(reader: BlobReader, dest: Path, *, diff_id: Digest, what: str,
                   userxattr: bool = False) -> Path:
    """Build ``dest`` from the verified blob; returns it. Blocking.

    On any error (a digest mismatch, a cancellation, the network) the temporary directory is
    removed and the error raised; ``dest`` appears only complete and verified."""
    if dest.is_dir():
        return dest  # a previous run (or another process) completed it
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_dead_temps(dest)
    temp = dest.parent / f"new-{dest.name}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        temp.mkdir(mode=0o755)
        os.chmod(temp, 0o755)  # as a native snapshot's fs dir: the umask must not shape it
        try:
            apply_layer(io.BufferedReader(reader, PIECE), temp, userns=userxattr,
                        expected_diff_id=diff_id, skip=SKIPPED)
        except DigestMismatch as exc:
            raise DigestMismatch(f"{what}: uncompressed stream (diffID)", exc.expected,
                                 exc.actual) from None
        reader.finish()
        try:
            os.rename(temp, dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not dest.is_dir():
                raise
            shutil.rmtree(temp, ignore_errors=True)  # another process completed it first
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return dest


def remove_dead_temps(dest: Path) -> None:
    """The half-built directories for ``dest`` of processes that died (blocking)."""
    prefix = f"new-{dest.name}-"
    for temp in [dest.parent / prefix[:-1], *dest.parent.glob(prefix + "*")]:
        pid = temp.name[len(prefix):].split("-")[0]
        if temp.exists() and not (pid.isdigit() and alive(int(pid))):
            shutil.rmtree(temp, ignore_errors=True)


def remove_dir(path: Path) -> None:
    """Delete a materialised layer directory (blocking): renamed aside first, so a crash
    midway never leaves a half-deleted directory under the layer's name."""
    doomed = path.parent / f"rm-{path.name}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def open_beneath(root: Path, path: str) -> int:
    """An fd of the regular file ``path`` below ``root``, following no symlink on the way
    (blocking). The materialised tree mirrors the TOC, but a read must never leave it."""
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"{root}: bad path {path!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


__all__ = ["SKIPPED", "BlobReader", "Cancelled", "FetchPiece", "complete_layer", "open_beneath",
           "remove_dir"]
