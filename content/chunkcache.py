"""The chunk cache: verified, decompressed lazy-layer chunks, addressed by their digest.

    <root>/chunks/sha256/<hex>      the chunk's uncompressed bytes (immutable once renamed)
    <root>/chunks/tmp/<random>      being written; never read, swept by ``sweep_temp``

A chunk is keyed by the digest of its uncompressed bytes, so the same file in two layers or
two images is fetched and stored once. ``put`` verifies before anything becomes visible and
publishes with write-temp + rename, so a reader sees a whole verified chunk or nothing; a
crash leaves at most a temp file. Every method is blocking I/O: call them from a worker
thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from content.digest import Digest, verify_bytes
from content.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class CacheUsage:
    chunks: int
    bytes: int


class ChunkCache:
    """Content-addressed chunk store under ``root`` (``<root>/chunks`` by convention)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.bytes_written = 0  # by this instance: what the fetchers added
        self.chunks_written = 0

    def path(self, digest: Digest) -> Path:
        if not digest.hex or "/" in digest.hex or "/" in digest.algorithm:
            raise InvalidArgument(f"chunk cache: invalid digest {digest!r}")
        return self.root / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def get(self, digest: Digest) -> bytes | None:
        """The whole chunk, or None if it is not cached."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def read(self, digest: Digest, offset: int, size: int) -> bytes | None:
        """``size`` bytes of the chunk at ``offset`` (fewer at its end); None if not cached.

        Reads only the slice: a FUSE read of 128 KiB must not load a 4 MiB chunk.
        """
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def put(self, digest: Digest, data: bytes, *, verified: bool = False) -> bool:
        """Verify ``data`` against ``digest`` and store it; False if it was already there.

        Raises :class:`DigestMismatch` (nothing stored) when the bytes do not match.
        ``verified``: the caller has just hashed these very bytes (``decode_chunk`` does),
        so hashing again would only burn CPU.
        """
        if not verified:
            verify_bytes(f"chunk cache: chunk {digest.short()}", data, digest)
        target = self.path(digest)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="chunk-", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # No fsync: a chunk lost in a crash is fetched again; a torn one cannot appear
            # because only whole, verified files are renamed into place.
            os.chmod(tmp, 0o444)
            os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            self.bytes_written += len(data)
            self.chunks_written += 1
        return True

    def remove(self, digest: Digest) -> bool:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def usage(self) -> CacheUsage:
        """What the cache holds on disk (walks it: for status reports, not hot paths)."""
        chunks = size = 0
        for algorithm in self.root.iterdir():
            if algorithm == self._tmp or not algorithm.is_dir():
                continue
            for entry in os.scandir(algorithm):
                with contextlib.suppress(FileNotFoundError):
                    size += entry.stat(follow_symlinks=False).st_size
                    chunks += 1
        return CacheUsage(chunks, size)

    def sweep_temp(self) -> int:
        """Delete leftover temp files (call at startup, before any writer runs)."""
        removed = 0
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        return removed


__all__ = ["CacheUsage", "ChunkCache"]
