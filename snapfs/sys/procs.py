"""Stopping a child process this process started (``subprocess.Popen``), blocking.

SIGTERM first, so the child can clean up (unmount, remove sockets); SIGKILL only if it has
not exited within ``timeout``. Must not signal anything but the given child (never by name,
never a process group it did not create).
"""

from __future__ import annotations

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


__all__ = ["terminate"]
