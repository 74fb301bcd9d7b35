"""Pid files held with ``flock``: one process per root, state dir or socket.

``lock_pidfiles(paths)`` takes an exclusive, non-blocking ``flock`` on each file (created
0644 if missing), writes this process's PID into it and keeps the descriptor open until it is
released; the kernel drops the lock when the process dies, so a file left by a killed
daemon is taken over, never refused. A file another process holds raises
:class:`AlreadyLocked` naming that process's PID, before anything of ours is touched.

It must not remove the files (a process that opened a file just unlinked would lock an
orphan inode while a third one creates a fresh file: two holders) and must not pass the
descriptors to children (``O_CLOEXEC``: a mount helper outliving us would keep the lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

from snapfs.errors import FailedPrecondition


class AlreadyLocked(FailedPrecondition):
    """A pid file is held by another live process."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process that has not written its pid"
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.pid = pid


def read_pid(path: Path) -> int | None:
    """The PID written in ``path``, None when missing, empty or not a number."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AlreadyLocked(path, read_pid(path)) from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class HeldPidFiles:
    """Locks taken by :func:`lock_pidfiles`; released (and emptied) on exit or ``release``."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            # Emptied, not removed (see the module docstring): a stale PID misleads nobody.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> HeldPidFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_pidfiles(paths: Sequence[Path]) -> HeldPidFiles:
    """Hold every file in ``paths`` (duplicates once), or none of them and raise."""
    held = HeldPidFiles([])
    seen: set[Path] = set()
    try:
        for path in paths:
            key = path.absolute()
            if key not in seen:
                seen.add(key)
                held._fds.append(_lock(path))
    except BaseException:
        held.release()
        raise
    return held


__all__ = ["AlreadyLocked", "HeldPidFiles", "lock_pidfiles", "read_pid"]
