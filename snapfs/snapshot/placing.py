"""Renaming a new snapshot's directory into place, past what a killed process left there.

Must not open LMDB: the caller renames inside the write transaction that allocated the id.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


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
