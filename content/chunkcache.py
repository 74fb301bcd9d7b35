"""The chunk cache: verified, decompressed lazy-layer chunks, addressed by their digest.

    <root>/chunks/sha256/<hex>      the chunk's uncompressed bytes (immutable once renamed)
    <root>/chunks/tmp/<random>      being written; never read, swept by ``sweep_temp``

A chunk is keyed by the digest of its uncompressed bytes, so the same file in two layers or
two images is fetched and stored once. ``put`` verifies before anything becomes visible and
publishes with write-temp + rename, so a reader sees a whole verified chunk or nothing; a
crash leaves at most a temp file. Every method is blocking I/O: call them from a worker
thread (``trio.to_thread.run_sync``).

Reads keep the chunk files they touch open (``OpenChunks``, a small LRU): a lazy file is
read 128 KiB to 1 MiB at a time, and opening the chunk afresh for each request both costs
syscalls and throws away the kernel's per-open readahead state, so with cold page caches
every request became a small synchronous disk read (issue #7: ~200 MB/s). An open chunk is
also asked for at once in full (``POSIX_FADV_WILLNEED``, chunks are at most a few MiB), and
``advise`` lets a sequential reader ask for the next chunk before it gets there. Chunks are
immutable and content-addressed, so a file held open after another process removed it still
holds the right bytes; ``remove`` closes this instance's copy.

A cache given :class:`~content.chunkbudget.Limits` (``[cache] max_size`` / ``min_free``)
stays within them: ``put`` first evicts the least recently used chunks (``CacheBudget``), so
the cache never holds more than ``max_size`` plus the one chunk being written. Evicted
digests are kept for :meth:`ChunkCache.drain_evicted`, so that fetchers stop counting them as
local; a reader that wants one again fetches (and verifies) it again.

Must not store a chunk that was not verified against its digest (here, or by the caller that
just hashed it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from content.chunkbudget import CacheBudget, Evictions, Limits
from content.digest import Digest, parse_digest, verify_bytes
from content.errors import InvalidArgument

OPEN_CHUNKS = 64  # chunk files a cache keeps open for reading
_LIST_ABOVE = 64  # ChunkCache.which: from this many digests on, list the directory


@dataclass(frozen=True, slots=True)
class CacheUsage:
    chunks: int
    bytes: int


class _Open:
    """One open chunk file; closed once evicted and no reader uses it (an fd closed under a
    reader could be reused by another open and serve the wrong chunk)."""

    __slots__ = ("evicted", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.evicted = False


class OpenChunks:
    """An LRU of open chunk files, shared by the worker threads reading them."""

    def __init__(self, capacity: int = OPEN_CHUNKS) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._files: OrderedDict[Path, _Open] = OrderedDict()

    def acquire(self, path: Path) -> tuple[_Open, bool] | None:
        """The open file for ``path`` (opened now: second item True), or None if absent.
        Pair with ``release``."""
        with self._lock:
            entry = self._files.get(path)
            if entry is not None:
                self._files.move_to_end(path)
                entry.users += 1
                return entry, False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        close: list[_Open] = []
        with self._lock:
            entry = self._files.get(path)
            if entry is not None:  # another thread opened it meanwhile: use theirs
                close.append(_Open(fd))
                fresh = False
            else:
                entry = self._files[path] = _Open(fd)
                fresh = True
                while len(self._files) > self.capacity:
                    _, old = self._files.popitem(last=False)
                    old.evicted = True
                    if old.users == 0:
                        close.append(old)
            entry.users += 1
        for old in close:
            os.close(old.fd)
        return entry, fresh

    def release(self, entry: _Open) -> None:
        with self._lock:
            entry.users -= 1
            done = entry.evicted and entry.users == 0
        if done:
            os.close(entry.fd)

    def drop(self, path: Path) -> None:
        with self._lock:
            entry = self._files.pop(path, None)
            if entry is None:
                return
            entry.evicted = True
            done = entry.users == 0
        if done:
            os.close(entry.fd)

    def close(self) -> None:
        with self._lock:
            entries = list(self._files.values())
            self._files.clear()
            for e in entries:
                e.evicted = True
        for e in entries:
            if e.users == 0:
                os.close(e.fd)


def _willneed(fd: int) -> None:
    # Starts reading the whole chunk in the background; advice, so failure is harmless.
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)


class ChunkCache:
    """Content-addressed chunk store under ``root`` (``<root>/chunks`` by convention)."""

    def __init__(self, root: Path, *, open_files: int = OPEN_CHUNKS,
                 limits: Limits | None = None) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.bytes_written = 0  # by this instance: what the fetchers added
        self.chunks_written = 0
        self._open = OpenChunks(open_files)
        self.limits = limits or Limits()
        self._budget = CacheBudget(self.limits, self._free_bytes)
        self._loaded = False  # the budget learns what is on disk at the first put
        self._evicted: list[Digest] = []

    def _free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
        entries = []
        for algorithm in self.root.iterdir():
            if algorithm == self._tmp or not algorithm.is_dir():
                continue
            for entry in os.scandir(algorithm):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((f"{algorithm.name}:{entry.name}", st.st_size,
                                    max(st.st_atime, st.st_mtime)))
        self._budget.load(entries)

    def used_bytes(self) -> int:
        """What the cache holds: from the budget's books once it has them, else by a walk."""
        with self._lock:
            loaded = self._loaded
        return self._budget.used if loaded else self.usage().bytes

    def evictions(self) -> Evictions:
        """Chunks (and bytes) this instance evicted, by cause."""
        return self._budget.evictions()

    def drain_evicted(self) -> list[Digest]:
        """The digests evicted since the last call (for fetchers to forget)."""
        with self._lock:
            out, self._evicted = self._evicted, []
        return out

    def path(self, digest: Digest) -> Path:
        if not digest.hex or "/" in digest.hex or "/" in digest.algorithm:
            raise InvalidArgument(f"chunk cache: invalid digest {digest!r}")
        return self.root / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def which(self, digests: Collection[Digest]) -> set[Digest]:
        """The ones of ``digests`` that are cached. For many, one listing of the cache
        directory instead of a stat each (a layer of 8000 files: ~0.1 s of stats, while a
        fresh cache lists in microseconds)."""
        if len(digests) < _LIST_ABOVE:
            return {d for d in digests if self.has(d)}
        names: dict[str, set[str]] = {}
        out: set[Digest] = set()
        for d in digests:
            listed = names.get(d.algorithm)
            if listed is None:
                self.path(d)  # refuses a malformed digest, as has() would
                try:
                    listed = names[d.algorithm] = set(os.listdir(self.root / d.algorithm))
                except FileNotFoundError:
                    listed = names[d.algorithm] = set()
            if d.hex in listed:
                out.add(d)
        return out

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
        got = self._open.acquire(self.path(digest))
        if got is None:
            return None
        if self.limits.bounded:
            self._budget.touch(str(digest))
        entry, fresh = got
        try:
            if fresh:
                _willneed(entry.fd)
            return os.pread(entry.fd, size, offset)
        finally:
            self._open.release(entry)

    def advise(self, digest: Digest) -> bool:
        """Start reading the chunk into memory in the background (a reader will want it
        soon); False if it is not cached. Cheap when the chunk is already open."""
        got = self._open.acquire(self.path(digest))
        if got is None:
            return False
        entry, fresh = got
        if fresh:
            _willneed(entry.fd)
        self._open.release(entry)
        return True

    def close(self) -> None:
        """Close the chunk files held open for reading (the cache stays usable)."""
        self._open.close()

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
        bounded = self.limits.bounded
        if bounded:
            self._load()
            self._evict(self._budget.reserve(str(digest), len(data)))
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
            if bounded:
                self._budget.cancel(len(data))
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if bounded:
            self._budget.stored(str(digest), len(data))
        with self._lock:
            self.bytes_written += len(data)
            self.chunks_written += 1
        return True

    def _evict(self, names: list[str]) -> None:
        gone = []
        for name in names:
            digest = parse_digest(name)
            self._open.drop(self.path(digest))
            with contextlib.suppress(FileNotFoundError):
                self.path(digest).unlink()
            gone.append(digest)
        if gone:
            with self._lock:
                self._evicted.extend(gone)

    def remove(self, digest: Digest) -> bool:
        self._open.drop(self.path(digest))
        self._budget.removed(str(digest))
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> list[tuple[Digest, int]]:
        """Every cached chunk and its size (walks the cache: for GC, not hot paths)."""
        out = []
        for algorithm in self.root.iterdir():
            if algorithm == self._tmp or not algorithm.is_dir():
                continue
            for entry in os.scandir(algorithm):
                with contextlib.suppress(FileNotFoundError, InvalidArgument):
                    size = entry.stat(follow_symlinks=False).st_size
                    out.append((parse_digest(f"{algorithm.name}:{entry.name}"), size))
        return out

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


__all__ = ["OPEN_CHUNKS", "CacheUsage", "ChunkCache", "OpenChunks"]
