"""A new snapshot's directory: its temporary name, its rename into place past what a killed
process left there, and the sweep of what killed processes left under ``snapshots/``.

Must not open LMDB: the caller renames inside the write transaction that allocated the id.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path

from snapfs.sys.procs import alive

log = logging.getLogger(__name__)

_NEW = re.compile(r"new-(\d+)-")


def temp_prefix() -> str:
    """A new snapshot dir's prefix, ``new-<pid>-``: several processes may share a root, and
    a later start must tell a dead process's dir from one a live process is preparing."""
    return f"new-{os.getpid()}-"


def in_flight(name: str) -> bool:
    """Whether ``name`` under ``snapshots/`` is a live process's Prepare in progress."""
    new = _NEW.match(name)
    return new is not None and alive(int(new.group(1)))


def leftovers(snapshots: Path) -> list[Path]:
    """What killed processes left in ``snapshots``: ``rm-*`` (removals whose transaction
    committed, their deletion cut short) and ``new-<pid>-*`` of processes no longer alive (a
    Prepare killed before its rename). A reused pid only delays a sweep; cleanup gets it."""
    try:
        names = os.listdir(snapshots)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.startswith("rm-") or (_NEW.match(name) and not in_flight(name)):
            out.append(snapshots / name)
    return out


def sweep_leftovers(snapshots: Path) -> int:
    """Delete :func:`leftovers` (blocking: a container's upper dir can be large); returns how
    many. Another process sweeping the same dir at once is harmless."""
    found = leftovers(snapshots)
    for path in found:
        log.info("removing %s, left by an interrupted operation", path)
        shutil.rmtree(path, ignore_errors=True)
    return len(found)


def into_place(temp: Path, target: Path) -> None:
    """Rename ``temp`` to its snapshot id's dir ``target``. A dir already there belongs to
    no snapshot: a process killed between this rename and its transaction's commit left it
    (the id was never committed, so it is handed out again). It is moved aside as ``rm-*``
    (the snapshotter's ``cleanup`` collects it) instead of failing every later Prepare with
    "Directory not empty"."""
    try:
        os.rename(temp, target)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        log.warning("snapshot dir %s left by an interrupted operation: moved aside", target)
        os.rename(target, target.with_name(f"rm-{target.name}-{os.urandom(4).hex()}"))
        os.rename(temp, target)
