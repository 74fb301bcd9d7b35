"""Processes by PID: stopping a child this process started (``subprocess.Popen``), and
asking whether a PID still exists (the owner of a leftover named by its PID).

SIGTERM first, so the child can clean up (unmount, remove sockets); SIGKILL only if it has
not exited within ``timeout``. Must not signal anything but the given child (never by name,
never a process group it did not create); :func:`alive` sends signal 0, which only asks.
"""

from __future__ import annotations

import os
import subprocess


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop ``proc`` (SIGTERM, then SIGKILL after ``timeout`` seconds); its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie included); someone else's counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie, exited but not yet reaped, does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


__all__ = ["alive", "running", "terminate"]
