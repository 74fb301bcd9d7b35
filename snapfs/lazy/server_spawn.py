"""Starting ``snapfs fuse-server`` and waiting for one to end: its argv (the same Python and
code as the client), the process in a session of its own, and a bounded wait for its exit.

Must not talk to the server (``snapfs.lazy.fuse_client`` does).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from content.chunkbudget import Limits
from snapfs.sys.procs import running

START_TIMEOUT = 30.0  # a loaded machine; a server normally answers in well under a second
UNBOUNDED = Limits()


def popen(argv: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    if log is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
    # A command's output may be a pipe its caller reads to EOF: the server must not keep it.
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)


async def gone(pid: int | None) -> None:
    """Until ``pid`` has exited (bounded: a server that hangs is not waited for)."""
    with trio.move_on_after(START_TIMEOUT):
        while pid is not None and running(pid):
            await trio.sleep(0.02)


def server_argv(root: Path, state: Path, *, read_timeout: float, concurrency: int,
                window: int, log_level: str, limits: Limits = UNBOUNDED) -> list[str]:
    """How the daemon starts ``snapfs fuse-server`` for its root: the same Python and code.
    ``limits``: the ``[cache]`` bounds (the server stores the chunks reads fetch)."""
    return [sys.executable, "-c", "from snapfs.cli import console_main; console_main()",
            "fuse-server", "--root", str(root), "--state", str(state),
            "--read-timeout", str(read_timeout), "--concurrency", str(concurrency),
            "--window", str(window), "--cache-max-size", str(limits.max_bytes),
            "--cache-min-free", str(limits.min_free), "--log-level", log_level]


def settings(argv: list[str]) -> list[str]:
    """What of ``server_argv``'s result the server sees as its ``sys.argv[1:]`` (and tells
    in its hello): the command and its options, without the interpreter and ``-c`` code."""
    return argv[3:]


__all__ = ["START_TIMEOUT", "gone", "popen", "server_argv", "settings"]
