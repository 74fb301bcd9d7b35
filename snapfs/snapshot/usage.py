"""Disk usage of a snapshot directory, as containerd's ``fs.DiskUsage`` counts it.

Size is the bytes of regular files, inodes the number of distinct inodes (directories,
links and special files included); a hard-linked file counts once. Blocking: call it through
``trio.to_thread.run_sync``.

Must not change anything on disk: it only walks and stats.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from snapfs.snapshot.types import Usage


def disk_usage(root: Path) -> Usage:
    seen: set[tuple[int, int]] = set()
    size = 0

    def account(path: str) -> None:
        nonlocal size
        st = os.lstat(path)
        ino = (st.st_dev, st.st_ino)
        if ino in seen:
            return
        seen.add(ino)
        if stat.S_ISREG(st.st_mode):
            size += st.st_size

    account(str(root))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            account(os.path.join(dirpath, name))
    return Usage(size=size, inodes=len(seen))
