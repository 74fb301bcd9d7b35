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

    def __init__(self, fs: LayerFS, nursery: trio.Nursery | None, *,
                 required: bool = False) -> None:
        self.fs = fs
        self._nursery = nursery
        self._required = required  # refuse (FailedPrecondition) rather than answer False
        self._served = False
        self._failed = ""  # why the mount cannot be served here, once known
        self._lock = trio.Lock()

    @property
    def served(self) -> bool:
        """Whether this process serves the mount now."""
        return self._served

    async def ensure_served(self) -> bool:
        """Serve the mount if it is not served yet; False if this process cannot (said
        once, in one warning line), or FailedPrecondition when lazy layers are required."""
        if self._nursery is None:
            return True
        async with self._lock:
            if not self._served and not self._failed:
                await self._serve(self._nursery)
            if self._failed and self._required:
                raise FailedPrecondition(f"lazy layers: {self._failed}; --lazy=required "
                                         "([fetch] lazy) refuses a full pull")
            return self._served

    async def _serve(self, nursery: trio.Nursery) -> None:
        mountpoint = self.fs.mountpoint
        if await trio.to_thread.run_sync(served_elsewhere, mountpoint, abandon_on_cancel=True):
            self._failed = f"{mountpoint} is served by another process"
        else:
            try:
                await nursery.start(serve_fuse, self.fs, mountpoint)
            except (Unavailable, FailedPrecondition, OSError) as exc:
                self._failed = f"cannot serve {mountpoint}: {exc}"
            else:
                self._served = True
                return
        if not self._required:
            log.warning("lazy layers: %s; pulling in full instead", self._failed)


__all__ = ["FuseSupervisor", "served_elsewhere"]
