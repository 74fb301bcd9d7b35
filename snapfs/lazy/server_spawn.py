"""Starting ``snapfs fuse-server`` and waiting for one to end: its argv (the same Python and
code as the client), the process in a session of its own, spawning until one answers, and
a bounded wait for its exit.

Must not talk to the server itself (``snapfs.lazy.fuse_client`` does, and passes its hello).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from content.chunkbudget import Limits
from content.errors import Unavailable
from snapfs.sys.procs import running

START_TIMEOUT = 30.0  # a loaded machine; a server normally answers in well under a second
RESPAWN_AFTER = 0.5  # seconds a spawned server that lost the pid file waits for its holder
UNBOUNDED = Limits()


def popen(argv: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    if log is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
    # A command's output may be a pipe its caller reads to EOF: the server must not keep it.
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)


async def spawn_until_answered(argv: list[str], log: Path | None, nursery: trio.Nursery,
                               hello: Callable[[], Awaitable[Any]], where: str) -> None:
    """Start servers until ``hello`` answers (not None): a server exits 0 at once while
    another holds the pid file; that one answers, or it is exiting (unused) or draining,
    and then the next one spawned takes the pid file once it is free."""
    proc: subprocess.Popen[bytes] | None = None
    with trio.move_on_after(START_TIMEOUT):
        while True:
            proc = await trio.to_thread.run_sync(popen, argv, log)
            # Reaped if it exits while this process lives (no zombie); abandoned at exit.
            nursery.start_soon(partial(trio.to_thread.run_sync, proc.wait,
                                       abandon_on_cancel=True))
            lost_at = None
            while proc.poll() in (None, 0):
                if await hello() is not None:
                    return
                if proc.poll() == 0:
                    if lost_at is None:
                        lost_at = trio.current_time()
                    if trio.current_time() - lost_at > RESPAWN_AFTER:
                        break
                await trio.sleep(0.05)
            else:
                break  # it failed (exit status not 0): no use spawning again
    status = None if proc is None else proc.poll()
    raise Unavailable(f"fuse server did not answer at {where} (exit status {status})")


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


__all__ = ["START_TIMEOUT", "gone", "popen", "server_argv", "settings", "spawn_until_answered"]
