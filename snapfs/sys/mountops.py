"""Unmounting: ``umount2`` with a lazy-detach fallback, and "everything stacked here".

Mounting a snapshot's computed mounts is ``snapfs.snapshot.mounting.mount_all``; this module
holds the plain kernel calls any package needs to undo mounts. Must not parse mountinfo itself
(``snapfs.sys.mountinfo`` does) or know snapshot shapes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

import trio

from snapfs.errors import Internal
from snapfs.sys.mountinfo import is_mounted, mounts_under

MNT_DETACH = 2
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def umount2(target: str, flags: int) -> int:
    """umount2(2); returns 0 or the errno."""
    if _LIBC.umount2(os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def unmount_sync(target: str) -> None:
    """Unmount the topmost mount on ``target`` (blocking); a no-op when nothing is there."""
    err = umount2(target, 0)
    if err == errno.EBUSY:
        # Something still holds files open (a shell, a late reader): detach lazily so the
        # caller can carry on; the kernel frees it when the last user goes.
        err = umount2(target, MNT_DETACH)
    if err and err != errno.EINVAL:  # EINVAL: not a mount point (already unmounted)
        raise Internal(f"unmount {target} failed: {os.strerror(err)}")


async def unmount(target: Path) -> None:
    """Unmount the topmost mount on ``target``; a no-op when nothing is mounted there."""
    await trio.to_thread.run_sync(unmount_sync, str(target))


async def unmount_all(target: Path) -> None:
    """Unmount every mount stacked on ``target``."""
    for _ in range(64):  # bounded: a mount that will not go must not loop us forever
        if not is_mounted(target):
            return
        await unmount(target)
    raise Internal(f"unmount {target}: still mounted after 64 attempts")


def detach_all_under(root: Path) -> None:
    """Lazily detach every mount at or below ``root``, deepest first (blocking; cleanup after
    tests, benchmarks and crashed runs, where nothing may be left mounted)."""
    for point in mounts_under(root):
        umount2(point, MNT_DETACH)


__all__ = ["MNT_DETACH", "detach_all_under", "umount2", "unmount", "unmount_all",
           "unmount_sync"]
