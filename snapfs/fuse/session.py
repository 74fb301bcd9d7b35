"""Serving the one FUSE mount: ``serve_fuse`` mounts, serves until cancelled, unmounts.

pyfuse3 keeps a single session per process, so there is one mount (``<root>/fuse``) with a
directory per layer, and ``serve_fuse`` refuses to start a second one. Requests are
served on the caller's trio loop: nothing on that loop may touch the mount with blocking
I/O (it would wait for a reply only this loop can send); use a thread or a subprocess.

Read size: the kernel sends FUSE reads no larger than the mount's readahead window, which
starts at 128 KiB (the backing device's default). At ~30 µs of Python per request plus a
worker-thread hop per read, requests that small cap a lazy layer well below the disk.
libfuse negotiates 1 MiB requests (``max_pages``) but cannot raise readahead, so as root
``serve_fuse`` sets the mount's ``/sys/class/bdi/<dev>/read_ahead_kb`` (``READAHEAD_KB``):
sequential readers then get 1 MiB requests, several in flight.

Must not know what the layers hold: it mounts, serves and unmounts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from pathlib import Path

import pyfuse3
import trio

from content.errors import FailedPrecondition, InvalidArgument, Unavailable
from snapfs.fuse.operations import LayerFS
from snapfs.sys import mountinfo
from snapfs.sys.mountinfo import mount_device

log = logging.getLogger(__name__)

_session_open = False  # pyfuse3's session is process-global
READAHEAD_KB = 4096  # several 1 MiB requests in flight for a sequential reader


DEV_FUSE = Path("/dev/fuse")


def check_dev_fuse(device: Path | None = None) -> None:
    """Unavailable, in one line with the fix, when ``device`` cannot be opened: libfuse would
    fail opening it (and does not fall back to fusermount3 inside a user namespace).
    Blocking (an open of a device, never of a FUSE-served path): run it in a thread."""
    device = device or DEV_FUSE
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        mode = ""
        with contextlib.suppress(OSError):
            mode = f", mode {stat.S_IMODE(device.stat().st_mode):04o}"
        fix = ("chmod 0666 /dev/fuse (as distributions ship it) or run as root"
               if exc.errno in (errno.EACCES, errno.EPERM) else "load the fuse module "
               "(modprobe fuse) or give the container /dev/fuse")
        raise Unavailable(f"{device}: cannot open it ({exc.strerror}{mode}): {fix}") from None


def mount_options(*, root: bool) -> set[str]:
    options = {"fsname=snapfs", "subtype=snapfs", "ro", "default_permissions"}
    if root:
        # Containers (and overlayfs acting for them) access the tree as other users.
        options.add("allow_other")
    return options


def set_readahead(mountpoint: Path, kb: int = READAHEAD_KB) -> bool:
    """Set the readahead window of the mount at ``mountpoint`` (blocking; root only).
    Reads ``/proc/self/mountinfo`` rather than stat-ing the mount, which would wait for a
    FUSE reply. False (and a log line) when it cannot: reads just stay smaller."""
    try:
        dev = mount_device(mountinfo.read(), mountpoint)
        if dev is None:
            log.warning("fuse: %s not in /proc/self/mountinfo; readahead left as is",
                        mountpoint)
            return False
        Path("/sys/class/bdi", dev, "read_ahead_kb").write_text(f"{kb}\n")
    except OSError as exc:
        log.info("fuse: cannot set readahead of %s to %d KiB: %s", mountpoint, kb, exc)
        return False
    log.debug("fuse: readahead of %s (bdi %s) set to %d KiB", mountpoint, dev, kb)
    return True


def probe(mountpoint: Path) -> int:
    """0 if the mountpoint's filesystem answers, else the errno."""
    try:
        # statfs always reaches the FUSE server; stat may be answered from cached attributes.
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


async def clear_stale_mount(mountpoint: Path) -> bool:
    """Lazily unmount a FUSE mount left by a server that died ("Transport endpoint is not
    connected"). Returns whether there was one. A live mount is left alone."""
    # abandon_on_cancel: a stat on a hung mount may never return.
    code = await trio.to_thread.run_sync(probe, mountpoint, abandon_on_cancel=True)
    if code != errno.ENOTCONN:
        return False
    log.warning("fuse: %s is a stale mount (server gone); unmounting it lazily", mountpoint)
    if os.geteuid() == 0:
        cmd = ["umount", "-l", str(mountpoint)]
    else:
        cmd = [shutil.which("fusermount3") or "fusermount3", "-u", "-z", str(mountpoint)]
    result = await trio.run_process(cmd, check=False, capture_stderr=True)
    code = await trio.to_thread.run_sync(probe, mountpoint, abandon_on_cancel=True)
    if code == errno.ENOTCONN:
        raise Unavailable(f"fuse mount {mountpoint}: stale and could not be unmounted: "
                          f"{result.stderr.decode(errors='replace').strip()}")
    return True


async def serve_fuse(
    fs: LayerFS,
    mountpoint: Path,
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until cancelled (or unmounted from
    outside); the mount is always removed on the way out. ``task_status.started`` reports
    the mountpoint once the kernel has it."""
    global _session_open
    if mountpoint != fs.mountpoint:
        raise InvalidArgument(f"fuse mount {mountpoint}: filesystem was built for "
                              f"{fs.mountpoint}")
    if _session_open:
        raise FailedPrecondition(f"fuse mount {mountpoint}: this process already serves a "
                                 "FUSE mount (pyfuse3 allows one session per process)")
    await trio.to_thread.run_sync(check_dev_fuse)
    await clear_stale_mount(mountpoint)
    await trio.to_thread.run_sync(lambda: mountpoint.mkdir(parents=True, exist_ok=True))
    try:
        pyfuse3.init(fs, str(mountpoint), mount_options(root=os.geteuid() == 0))
    except RuntimeError as exc:
        raise Unavailable(f"fuse mount {mountpoint}: mount failed: {exc}") from exc
    _session_open = True
    fs.set_mounted(True)
    log.info("fuse: serving %s", mountpoint)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            if os.geteuid() == 0:
                # The kernel resets readahead when it processes the INIT reply, which
                # pyfuse3.main sends; statfs returns only after that.
                await trio.to_thread.run_sync(probe, mountpoint, abandon_on_cancel=True)
                await trio.to_thread.run_sync(set_readahead, mountpoint)
            task_status.started(mountpoint)
    finally:
        fs.set_mounted(False)
        _session_open = False
        # Detaches even while a reader is blocked in the mount; never awaits.
        pyfuse3.close(unmount=True)
        log.info("fuse: unmounted %s", mountpoint)
