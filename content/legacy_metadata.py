"""The previous layout of a root's metadata, four LMDB environments, and the file work of
moving one into ``metadata.lmdb``: is it there, does another process have it open, copy its
records, set it aside. content.metadata runs this inside its migration transaction and under
its flock (its docstring gives the order and why a crash loses nothing); the one place that
opens LMDB stays there, and hands the old environment in.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb

from content.errors import FailedPrecondition

ASIDE = ".migrated-v1"


@dataclass(frozen=True, slots=True)
class Legacy:
    """One environment of the previous layout, and the database its records move to."""

    rel: str  # its path under the root
    subdir: bool  # an environment directory; else one file (plus "<name>-lock")
    db: bytes | None  # its named database; None: the unnamed one
    into: bytes

    def present(self, root: Path) -> bool:
        path = root / self.rel
        return (path / "data.mdb").is_file() if self.subdir else path.is_file()

    def held_elsewhere(self, root: Path) -> bool:
        """Whether another process has it open: every LMDB process holds a shared fcntl
        lock on the first byte of the environment's lock file."""
        try:
            fd = os.open(self._lockfile(root), os.O_RDWR)
        except (FileNotFoundError, PermissionError):
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)  # also drops the test lock
        return False

    def aside_name(self, root: Path) -> str:
        """``<name>.migrated-v1``, or ``.2``, ``.3``… if an earlier migration left that."""
        path = root / self.rel
        name, n = path.name + ASIDE, 1
        while path.with_name(name).exists():
            n += 1
            name = f"{path.name}{ASIDE}.{n}"
        return name

    def set_aside(self, root: Path, aside: str) -> None:
        path = root / self.rel
        os.rename(path, path.with_name(aside))
        if not self.subdir:
            self._lockfile(root).unlink(missing_ok=True)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _lockfile(self, root: Path) -> Path:
        path = root / self.rel
        return path / "lock.mdb" if self.subdir else path.with_name(path.name + "-lock")


def copy_records(env: lmdb.Environment, old: Legacy, root: Path,
                 get: Callable[[bytes], bytes | None], put: Callable[[bytes, bytes], None],
                 ) -> int:
    """Copy every record of ``old`` (opened read-only as ``env``) through ``put``; refuse a
    key whose value ``get`` already knows differently. Returns how many were copied."""
    count = 0
    with env.begin() as src:
        try:
            db = env.open_db(old.db, txn=src, create=False) if old.db else None
        except lmdb.NotFoundError:
            return 0  # opened but never written
        for raw_key, raw_value in src.cursor(db=db):
            key, value = bytes(raw_key), bytes(raw_value)
            if get(key) not in (None, value):
                raise FailedPrecondition(
                    f"metadata {root}: {old.rel} (the previous layout) disagrees with "
                    f"metadata.lmdb on {key[:80]!r}; move {old.rel} aside to keep "
                    f"metadata.lmdb, or move metadata.lmdb aside to migrate {old.rel} again")
            put(key, value)
            count += 1
    return count


__all__ = ["ASIDE", "Legacy", "copy_records"]
