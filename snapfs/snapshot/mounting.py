"""Performing a snapshot's mounts on a target directory (containerd's ``mount.All``).

Mounts go through ``/bin/mount`` (``trio.run_process``), which also handles ``rbind`` +
``ro`` (a bind mount needs a remount to become read-only); long overlay options are mounted
relative to their common directory (``compact_overlay``). The shapes come from
``snapfs.snapshot.mounts``; undoing them is ``snapfs.sys.mountops``.

Must not plan mounts: ``snapfs.snapshot.mounts`` computes them; this only performs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio

from snapfs.errors import Internal
from snapfs.snapshot.mounts import compact_overlay
from snapfs.snapshot.types import Mount
from snapfs.sys.mountops import unmount

MOUNT_BINARY = "/bin/mount"


def mount_command(mount: Mount, target: Path) -> list[str]:
    cmd = [MOUNT_BINARY, "-t", mount.type]
    if mount.options:
        cmd += ["-o", ",".join(mount.options)]
    return [*cmd, mount.source, str(target)]


async def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Mount each of ``mounts`` on ``target`` in order (as containerd's ``mount.All``).

    On failure the mounts already made are undone before the error is raised."""
    done: list[Path] = []
    try:
        for m in mounts:
            dest = target / m.target.lstrip("/") if m.target else target
            compact, cwd = compact_overlay(m)
            res = await trio.run_process(
                mount_command(compact, dest),
                cwd=cwd,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if res.returncode != 0:
                why = res.stderr.decode(errors="replace").strip()
                raise Internal(f"mount {m.type} {m.source} on {dest} failed: {why}")
            done.append(dest)
    except BaseException:
        with trio.CancelScope(shield=True):
            for dest in reversed(done):
                await unmount(dest)
        raise


__all__ = ["MOUNT_BINARY", "mount_all", "mount_command"]
