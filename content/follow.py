"""Reading a blob while it is being downloaded: a reader that follows a growing ingest file.

A native pull unpacks a layer as its bytes arrive instead of after the whole blob: the
download appends to its ingest file (``content.ingest``) and reports each new end to a
:class:`FollowedBlob`; the unpacking thread reads through :meth:`FollowedBlob.reader`, which
blocks at the end of what has arrived until more comes, the download is committed (the blob
verified against its digest), or it failed. Every byte handed out is a byte of the ingest,
which only ever holds a prefix of the expected blob; the blob's digest is checked when the
download commits, and the reader returns end-of-file only after that, so a consumer that
reads to the end has read exactly the verified blob.

The ingest file may be replaced (a resumed download opens it again, possibly a new inode
holding the same prefix): the reader reopens the newest path and carries on at its position.
Must not write anything; blocking reads are for worker threads, never a trio loop.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from content.errors import Unavailable


class FollowedBlob:
    """The shared state between one blob's download and its reader (thread-safe)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._cond = threading.Condition()
        self._path: Path | None = None  # the file holding the bytes so far
        self._generation = 0  # bumped when _path changes
        self._available = 0
        self._done = False
        self._error: BaseException | None = None

    def update(self, path: Path, offset: int) -> None:
        """The download holds ``offset`` bytes in ``path`` (called after each write)."""
        with self._cond:
            if path != self._path:
                self._path = path
                self._generation += 1
            self._available = offset
            self._cond.notify_all()

    def finish(self, path: Path, size: int) -> None:
        """The blob is stored and verified at ``path``: readers may reach its end."""
        with self._cond:
            self._path, self._generation = path, self._generation + 1
            self._available, self._done = size, True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The download will not finish: readers waiting for bytes raise ``error``'s cause."""
        with self._cond:
            if not self._done and self._error is None:
                self._error = error
                self._cond.notify_all()

    def abort(self) -> None:
        """Readers fail at their next read, even of bytes already stored (the unpacking
        was cancelled, or finished: then this changes nothing)."""
        with self._cond:
            if self._error is None:
                self._error = Unavailable("the unpacking was cancelled")
            self._cond.notify_all()

    def _wait(self, pos: int) -> tuple[Path, int, int, bool]:
        with self._cond:
            while True:
                if self._error is not None:
                    raise Unavailable(f"{self.what}: download did not finish: "
                                      f"{self._error or type(self._error).__name__}"
                                      ) from self._error
                if self._path is not None and (self._available > pos or self._done):
                    return self._path, self._generation, self._available, self._done
                self._cond.wait()

    def _wait_other(self, generation: int) -> None:
        with self._cond:
            while (self._generation == generation and self._error is None
                   and not self._done):
                self._cond.wait()
            if self._generation == generation and self._error is None:
                raise Unavailable(f"{self.what}: {self._path} is shorter than the "
                                  f"{self._available} bytes stored")

    def reader(self) -> io.BufferedReader:
        return io.BufferedReader(_FollowingReader(self), buffer_size=1 << 20)


class _FollowingReader(io.RawIOBase):
    def __init__(self, blob: FollowedBlob) -> None:
        self._blob = blob
        self._pos = 0
        self._fd: int | None = None
        self._generation = -1

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        while True:
            path, generation, available, done = self._blob._wait(self._pos)
            if available <= self._pos and done:
                return 0
            if generation != self._generation:
                self._close_fd()
                try:
                    self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    self._fd = None  # replaced meanwhile: the next update names the new one
                self._generation = generation
            if self._fd is not None:
                n = os.preadv(self._fd, [memoryview(buf)[: available - self._pos]], self._pos)
                if n > 0:
                    self._pos += n
                    return n
            # The file we opened is not (or no longer) the one the bytes are in: a commit
            # or a resumed ingest replaced it. Never taken for the end; wait for the next.
            self._blob._wait_other(generation)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        super().close()


__all__ = ["FollowedBlob"]
