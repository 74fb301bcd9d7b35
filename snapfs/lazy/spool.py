"""Compressed ranges of blobs being completed, kept so that each byte crosses the link once.

While a lazy layer is on its way to local (``[fetch] background``), its readers' misses, its
startup set and the background stream all fetch ranges of the same blob. The scheduler
(``snapfs.lazy.scheduler``) puts every range of a spooled blob here as it arrives, and
answers a request from here as far as it is covered: the stream skips what readers already
fetched, and a reader's miss behind the stream is answered without the link.

Bytes are kept as they came, unverified, and leave only for a verifier: the FUSE server
checks every chunk against the verified TOC before serving or caching it, and the completion
hashes the whole blob against the layer digest and the diffID. A completion that fails those
checks drops the blob's spool and tries once more from the registry (``snapfs.lazy.lifecycle``),
so one bad range never outlives one try.

One anonymous file per blob (``O_TMPFILE``): it is gone when closed or when the process dies,
so nothing is left behind. Its I/O (``pread``/``pwrite`` of at most a piece) runs in worker
threads. Must not verify, decode or issue requests.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from content.digest import Digest

SPOOL_LIMITER = trio.CapacityLimiter(4)  # page-cache reads and writes of ≤ 1 MiB


class Ranges:
    """Disjoint, sorted ``[start, end)`` intervals (merged on insert)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first interval that ends at/after start
        j = bisect.bisect_right(self._starts, end)  # past the last that starts at/before end
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not covered, in order."""
        out: list[tuple[int, int]] = []
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end and i < len(self._starts) and self._starts[i] < end:
            if self._starts[i] > pos:
                out.append((pos, self._starts[i]))
            pos = max(pos, self._ends[i])
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def covered(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))


@dataclass(eq=False, slots=True)
class _Pending:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False, slots=True)
class _Blob:
    fd: int
    ranges: Ranges = field(default_factory=Ranges)
    pending: list[_Pending] = field(default_factory=list)  # ranges on their way
    users: int = 0  # reads and writes in flight: the fd closes after the last
    closed: bool = False


class BlobSpool:
    """The spooled blobs of one process, each in an anonymous file under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._blobs: dict[Digest, _Blob] = {}

    def holds(self, digest: Digest) -> bool:
        return digest in self._blobs

    def open(self, digest: Digest) -> None:
        """Start keeping ``digest``'s ranges (idempotent; blocking: creates the file)."""
        if digest in self._blobs:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._blobs[digest] = _Blob(_anonymous(self.directory))

    def close(self, digest: Digest) -> None:
        """Forget ``digest``'s ranges; the file goes once no read or write uses it."""
        blob = self._blobs.pop(digest, None)
        if blob is not None:
            blob.closed = True
            for p in blob.pending:
                p.done.set()  # its waiters find the range missing and ask the link
            if blob.users == 0:
                os.close(blob.fd)

    def missing(self, digest: Digest, offset: int, length: int) -> list[tuple[int, int]]:
        """The parts of the range not in the spool (all of it for a blob not spooled)."""
        blob = self._blobs.get(digest)
        if blob is None:
            return [(offset, offset + length)]
        return blob.ranges.missing(offset, offset + length)

    def claim(self, digest: Digest, gaps: list[tuple[int, int]],
              ) -> tuple[list[tuple[int, int]], list[trio.Event]]:
        """Of ``gaps``, the parts nobody is fetching yet (now claimed by the caller, who
        calls :meth:`release` for each), and the events of the fetches already on their way
        for the rest: one request per byte even when a reader and the stream ask at once."""
        blob = self._blobs.get(digest)
        if blob is None:
            return gaps, []
        mine: list[tuple[int, int]] = []
        waits: list[trio.Event] = []
        for start, end in gaps:
            todo = Ranges()
            todo.add(start, end)
            busy = Ranges()
            for p in blob.pending:
                if p.start < end and p.end > start:
                    busy.add(p.start, p.end)
                    waits.append(p.done)
            for s, e in busy.missing(start, end):
                mine.append((s, e))
                blob.pending.append(_Pending(s, e))
        return mine, waits

    def release(self, digest: Digest, start: int, end: int) -> None:
        """The claimed fetch of ``[start, end)`` ended (written, or failed)."""
        blob = self._blobs.get(digest)
        for p in [] if blob is None else list(blob.pending):
            if p.start == start and p.end == end:
                blob.pending.remove(p)  # type: ignore[union-attr]
                p.done.set()
                return

    def covered(self, digest: Digest) -> int:
        blob = self._blobs.get(digest)
        return 0 if blob is None else blob.ranges.covered()

    async def write(self, digest: Digest, offset: int, data: bytes) -> None:
        """Keep ``data`` at ``offset``; counted as covered once written (a no-op when the
        blob is not, or no longer, spooled)."""
        blob = self._blobs.get(digest)
        if blob is None or not data:
            return
        with self._using(blob):
            await trio.to_thread.run_sync(_pwrite_all, blob.fd, data, offset,
                                          limiter=SPOOL_LIMITER)
        if not blob.closed:
            blob.ranges.add(offset, offset + len(data))

    async def read(self, digest: Digest, offset: int, length: int) -> bytes | None:
        """The spooled range, or None when it is not (or no longer) all there."""
        blob = self._blobs.get(digest)
        if blob is None or blob.ranges.missing(offset, offset + length):
            return None
        with self._using(blob):
            data = await trio.to_thread.run_sync(os.pread, blob.fd, length, offset,
                                                 limiter=SPOOL_LIMITER)
        return data if len(data) == length else None

    @contextlib.contextmanager
    def _using(self, blob: _Blob) -> Iterator[None]:
        blob.users += 1
        try:
            yield
        finally:
            blob.users -= 1
            if blob.closed and blob.users == 0:
                os.close(blob.fd)

def _anonymous(directory: Path) -> int:
    """An unnamed file in ``directory`` (``O_TMPFILE``; else created and unlinked at once)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:  # a filesystem without O_TMPFILE
        fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-")
        os.unlink(name)
        return fd


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


__all__ = ["SPOOL_LIMITER", "BlobSpool", "Ranges"]
