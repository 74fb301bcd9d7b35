"""Whether this process serves the one FUSE mount, and starting it when first needed.

A root with no lazy layers has no mount: :meth:`FuseSupervisor.ensure_served` starts
``serve_fuse`` in the caller's nursery the first time a lazy layer needs it. A mountpoint that
another live process already serves (a daemon, while a CLI command runs embedded) is left to
it, and this process pulls natively; a stale mount (server gone) is cleared by ``serve_fuse``.
Must not know about layers, fetching or the registry: it supervises the mount, nothing else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from content.errors import FailedPrecondition, Unavailable
from snapfs.fuse.operations import LayerFS
from snapfs.fuse.session import serve_fuse

log = logging.getLogger(__name__)


def served_elsewhere(mountpoint: Path) -> bool:
    """Whether a live FUSE server (another process) answers at ``mountpoint`` (blocking).
    statfs always reaches the server; a stat may be answered from the kernel's attribute
    cache even after the server died, so a stale mount must not pass for a live one."""
    if not os.path.ismount(mountpoint):
        return False
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False  # stale (ENOTCONN): serve_fuse clears it
    return True


class FuseSupervisor:
    """Serves ``fs`` at its mountpoint in ``nursery`` on first need.

    With ``nursery=None`` nothing is ever mounted and :meth:`ensure_served` says yes (unit
    tests drive the filesystem object directly)."""

    def __init__(self, fs: LayerFS, nursery: trio.Nursery | None) -> None:
        self.fs = fs
        self._nursery = nursery
        self._served = False
        self._failed = False
        self._lock = trio.Lock()

    @property
    def served(self) -> bool:
        """Whether this process serves the mount now."""
        return self._served

    async def ensure_served(self) -> bool:
        """Serve the mount if it is not served yet; False if this process cannot."""
        if self._nursery is None:
            return True
        async with self._lock:
            if self._served or self._failed:
                return self._served
            mountpoint = self.fs.mountpoint
            if await trio.to_thread.run_sync(served_elsewhere, mountpoint,
                                             abandon_on_cancel=True):
                log.warning("lazy layers: %s is served by another process; pulling natively "
                            "here", mountpoint)
                self._failed = True
                return False
            try:
                await self._nursery.start(serve_fuse, self.fs, mountpoint)
            except (Unavailable, FailedPrecondition, OSError) as exc:
                log.warning("lazy layers: cannot serve %s (%s); pulling natively", mountpoint,
                            exc)
                self._failed = True
                return False
            self._served = True
            return True


__all__ = ["FuseSupervisor", "served_elsewhere"]
