"""Leases: what an operation in flight (a pull) still needs, so that a GC leaves it alone.

containerd gives a pull a lease that references the content and snapshots it creates until
the image record names them; this is the same idea across processes, on disk::

    <root>/leases/<pid>-<random>     one lease: lines "content <digest>" / "snapshot <name>"

The holder keeps an exclusive ``flock`` on its lease file for as long as the lease lives and
appends a reference *before* it writes what the reference names. A GC reads every lease; a
file whose lock it can take belongs to a process that died (the kernel drops a dead holder's
lock), so it is stale and removed. Nothing here deletes content or snapshots: the GC decides.
Every function is blocking (small files): call it from a worker thread in async code.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LEASES_DIR = "leases"


@dataclass(frozen=True, slots=True)
class LeasedRefs:
    """Everything the live leases of a root reference."""

    content: frozenset[str] = frozenset()  # digests, as strings
    snapshots: frozenset[str] = frozenset()  # snapshot names (chain IDs)
    leases: int = 0


class Lease:
    """One held lease; ``add`` references more. Close (or leave the ``with``) to end it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def add(self, *, content: Iterable[object] = (), snapshots: Iterable[str] = ()) -> None:
        lines = [f"content {d}\n" for d in content] + [f"snapshot {s}\n" for s in snapshots]
        if not lines or self._fd is None:
            return
        # One write per call: a reader sees whole lines or ignores a torn last one.
        os.write(self._fd, "".join(lines).encode())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(fd)  # the lock goes with the fd, after the file is gone


@contextlib.contextmanager
def open_lease(root: Path) -> Iterator[Lease]:
    """A new lease on the snapfs root ``root``, held (locked) until the block ends."""
    directory = root / LEASES_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    path = directory / name
    # Locked under a hidden name, then renamed: a GC must never see it unlocked (it would
    # take the lease for a dead one and remove it).
    hidden = directory / f".{name}"
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(hidden, path)
    lease = Lease(path, fd)
    try:
        yield lease
    finally:
        lease.close()


def _parse(text: str) -> tuple[set[str], set[str]]:
    content: set[str] = set()
    snapshots: set[str] = set()
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # torn: its write has not finished; the writer adds it before using it
        kind, _, value = line.strip().partition(" ")
        if kind == "content" and value:
            content.add(value)
        elif kind == "snapshot" and value:
            snapshots.add(value)
    return content, snapshots


def active_leases(root: Path) -> LeasedRefs:
    """What the live leases of ``root`` reference; leases of dead processes are removed."""
    directory = root / LEASES_DIR
    try:
        entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return LeasedRefs()
    content: set[str] = set()
    snapshots: set[str] = set()
    live = 0
    for path in entries:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # ended meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                # Held: read it while the holder has it (its lines stay valid until it ends).
                with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as f:
                    c, s = _parse(f.read())
                content |= c
                snapshots |= s
                live += 1
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # its holder died without ending it
        finally:
            os.close(fd)
    return LeasedRefs(frozenset(content), frozenset(snapshots), live)


__all__ = ["LEASES_DIR", "Lease", "LeasedRefs", "active_leases", "open_lease"]
