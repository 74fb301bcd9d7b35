"""Acting on a running container: ``stop``, ``kill``, ``exec``, ``logs`` and ``rm -f``.

Each works from the container's record (``snapfs.app.records``) and runc's state under
``<state>/runc``; none needs an engine but ``rm -f`` (for the snapshot). Signals go to the
container through runc; its owner (the supervising process of a detached container, or the
foreground ``snapfs run``) sees it exit, records the status and cleans up, so ``stop`` waits
for the owner to finish that, not for the container alone.

Must not parse flags or print to a terminal (``logs`` writes to the stream it is given).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import trio

from content.errors import FailedPrecondition, NotFound
from runtime.bundle import Owner, owner_alive
from runtime.lookpath import check_command
from runtime.runc import Runc
from runtime.spec import with_host_values
from snapfs.app.records import LOG, ContainerRecord, find_record, read_record
from snapfs.config import Config

# After SIGKILL, how long the owner may take to record the exit and clean up.
CLEANUP_WAIT = 30.0
POLL = 0.1


def _runc(config: Config) -> Runc:
    return Runc(root=config.state / "runc")


def _containers(config: Config) -> Path:
    return config.state / "containers"


async def wait_owner(owner: Owner) -> None:
    """Return once ``owner`` (not our child) has exited."""
    try:
        pidfd = os.pidfd_open(owner.pid)
    except ProcessLookupError:
        return
    try:
        if not owner_alive(owner):  # the pid was reused: ours is already gone
            return
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def _signal(config: Config, rec: ContainerRecord, signum: int) -> bool:
    """Send ``signum`` to the container; False when it was no longer running."""
    try:
        await _runc(config).kill(rec.id, signum)
    except (NotFound, FailedPrecondition):
        return False
    return True


async def stop_container(config: Config, ident: str, timeout: float) -> ContainerRecord:
    """docker stop: the image's stop signal, SIGKILL after ``timeout`` seconds; returns the
    record as its owner left it (None exit status if it was removed, as ``--rm`` does)."""
    rec = find_record(_containers(config), ident)
    if rec.status != "running":
        return rec
    if await _signal(config, rec, rec.stop_signal):
        with trio.move_on_after(timeout) as waited:
            await wait_owner(rec.owner)
        if waited.cancelled_caught:
            await _signal(config, rec, signal.SIGKILL)
    with trio.fail_after(CLEANUP_WAIT):
        await wait_owner(rec.owner)
    return read_record(_containers(config) / rec.id) or rec


async def kill_container(config: Config, ident: str, signum: int) -> ContainerRecord:
    """docker kill: send ``signum`` (SIGKILL by default) and return at once."""
    rec = find_record(_containers(config), ident)
    if rec.status != "running" or not await _signal(config, rec, signum):
        raise FailedPrecondition(f"container {rec.name} ({rec.id}): not running")
    return rec


async def exec_in_container(config: Config, ident: str, args: Sequence[str], *,
                            tty: bool = False, interactive: bool = False,
                            env: Sequence[str] = (), workdir: str | None = None) -> int:
    """docker exec: run ``args`` in the running container; the process's exit status.
    ``env``: ``NAME=VALUE``, or ``NAME`` for this process's value."""
    env = with_host_values(env, os.environ)
    rec = find_record(_containers(config), ident)
    if rec.status != "running":
        raise FailedPrecondition(f"container {rec.name} ({rec.id}): not running")
    runc = _runc(config)
    state = await runc.state(rec.id)
    # Judge the command where the container sees it: its init's root and environment.
    pid = int(state["pid"])
    process_env = _environ(pid) + list(env)
    root = Path(f"/proc/{pid}/root")
    cwd = workdir or _readlink(Path(f"/proc/{pid}/cwd")) or "/"
    await trio.to_thread.run_sync(lambda: check_command(root, args[0], env=process_env,
                                                        cwd=cwd))
    stdin = None
    with contextlib.ExitStack() as stack:
        if not interactive:
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, stdin)
        return await runc.exec(rec.id, args, tty=tty, env=env, cwd=workdir, stdin=stdin)


def _environ(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return []
    return [e.decode(errors="replace") for e in raw.split(b"\0") if e]


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def write_logs(config: Config, ident: str, out: BinaryIO, *, follow: bool = False) -> None:
    """Copy a detached container's log to ``out``; ``follow``: until the container ends."""
    rec = find_record(_containers(config), ident)
    path = _containers(config) / rec.id / LOG
    if not rec.detached:
        raise FailedPrecondition(f"container {rec.name} ({rec.id}): its output went to the "
                                 "terminal of `snapfs run` (logs are kept for `run -d`)")
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, or gone with --rm
    except FileNotFoundError:
        raise NotFound(f"container {rec.name} ({rec.id}): log {path} is gone") from None
    with f:
        while True:
            data = f.read(65536)
            if data:
                out.write(data)
                out.flush()
                continue
            if not follow:
                return
            current = read_record(_containers(config) / rec.id)
            if current is None or current.status != "running":
                if not f.read(1):  # nothing written since the last read: done
                    return
                f.seek(-1, os.SEEK_CUR)
                continue
            time.sleep(POLL)


async def remove(config: Config, ident: str, *, force: bool = False) -> str:
    """docker rm [-f]: the removed container's id. ``force`` SIGKILLs a running one first and
    waits for its owner to record that (or, for ``--rm``, to remove it itself)."""
    from snapfs.app.containers import remove_container
    from snapfs.app.engine import open_engine

    rec = find_record(_containers(config), ident)
    if force and rec.status == "running" and await _signal(config, rec, signal.SIGKILL):
        with trio.fail_after(CLEANUP_WAIT):
            await wait_owner(rec.owner)
        if read_record(_containers(config) / rec.id) is None:
            return rec.id
    async with open_engine(config) as engine:
        return (await remove_container(engine, rec.id)).id


__all__ = ["exec_in_container", "kill_container", "remove", "stop_container", "wait_owner",
           "write_logs"]
