"""The ``snapfs fuse-server`` process around its ``FuseServer``: the pid file, the mountpoint
it picks, its control socket, draining on SIGTERM and exiting when unused.

Upgrades drain: on SIGTERM a server gives up the names that make it *the* server of its
state dir (the control socket and the pid file), tells its watching clients it drains, and
goes on serving its mount until no mount in any namespace uses one of its layer
directories. The next client starts a fresh server, which finds ``<root>/fuse`` still held
and mounts at ``<root>/fuse.<n>``, the first free one; clients re-add their layers to it,
so new containers mount from it while running ones keep reading through the old one.
Snapshot records keep naming ``<root>/fuse/<layer>``: where a layer is served now is
resolved at mount time (``LayerMount.path_of``).

Must not decide what is mounted (``snapfs.lazy.fuse_server`` answers the requests);
blocking probes run in threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import trio

from content.errors import ContentError, Unavailable
from snapfs.fuse import serve_fuse
from snapfs.fuse.session import probe
from snapfs.lazy.build import code_build
from snapfs.lazy.fuse_server import CONTROL, PIDFILE, FuseServer, ServerOptions
from snapfs.sys.pidfile import lock_pidfiles

log = logging.getLogger(__name__)

_ACCEPT_LATER = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

DRAIN_INTERVAL = 1.0  # seconds between looks for users while draining or idle
MOUNTPOINTS = 8  # <root>/fuse, then fuse.1 … fuse.7: servers draining at once, at most


def mountpoint_name(n: int) -> str:
    return "fuse" if n == 0 else f"fuse.{n}"


def is_mountpoint_name(name: str) -> bool:
    """Whether ``name`` (one path component under the root) is a FUSE server's mountpoint."""
    return name == "fuse" or (name.startswith("fuse.") and name[5:].isdigit())


def choose_mountpoint(root: Path) -> Path:
    """The first of ``<root>/fuse``, ``<root>/fuse.1`` … that no live server holds: free,
    or left stale by a dead one (``serve_fuse`` clears it). Only a draining server can hold
    one while this process holds the pid file (blocking)."""
    for n in range(MOUNTPOINTS):
        path = root / mountpoint_name(n)
        # A stale mount answers ENOTCONN to stat: not ismount, and taken (then cleared).
        if not os.path.ismount(path) or probe(path) == errno.ENOTCONN:
            return path
    raise Unavailable(f"{root}: {MOUNTPOINTS} FUSE servers are draining; none is free")


async def _drain_on_signal(server: FuseServer, give_up_names: Callable[[], None]) -> None:
    """On SIGTERM or SIGINT: ``give_up_names`` (a fresh server may start), tell the watching
    clients, then return once no mount uses a layer of ``server``, twice in a row."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("fuse server: %s: draining %s (serving until no mount uses a layer; "
                     "new layers go to a fresh server)", signal.Signals(signum).name,
                     server.fs.mountpoint)
            break
    server.draining = True
    give_up_names()
    await server.tell_draining()
    idle = 0
    while idle < 2:  # twice in a row: a Mounts answer just given may be mounted next
        await trio.sleep(DRAIN_INTERVAL)
        busy = await trio.to_thread.run_sync(server.in_use)
        idle = 0 if busy else idle + 1
    log.info("fuse server: no mount uses its layers; unmounting %s", server.fs.mountpoint)


async def _exit_when_unused(server: FuseServer) -> None:
    """Clients gone without saying so (killed): exit once unused twice in a row (a Mounts
    answer just given may be mounted next)."""
    idle = 0
    while idle < 2:
        await trio.sleep(DRAIN_INTERVAL)
        idle = idle + 1 if await server.unused() else 0
    server.close("no process uses it and no mount its layers")


def _unlink_if_ours(path: Path, inode: int) -> None:
    """Remove the socket ``path`` unless another server bound a new one there since."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            path.unlink()


def _remove_spare(mountpoint: Path) -> None:
    """A drained server's ``fuse.<n>`` directory, once unmounted (``fuse`` itself stays)."""
    if mountpoint.name != "fuse":
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


async def _listen(path: Path) -> tuple[trio.SocketListener, int]:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)  # only root (the daemon) drives the mount
    sock.listen(64)
    return trio.SocketListener(sock), os.lstat(path).st_ino


async def serve_fuse_server(options: ServerOptions, *,
                            give_up_names: Callable[[], None] = lambda: None,
                            task_status: trio.TaskStatus[FuseServer] = trio.TASK_STATUS_IGNORED,
                            ) -> None:
    """Mount, then answer the control socket until cancelled or the mount goes away.
    ``give_up_names``: when draining, let a fresh server start (release the pid file)."""
    mountpoint = await trio.to_thread.run_sync(choose_mountpoint, options.root)
    server = FuseServer(options, mountpoint)
    try:
        await _serve(server, give_up_names, task_status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_spare, mountpoint)


async def _serve(server: FuseServer, give_up_names: Callable[[], None],
                 task_status: trio.TaskStatus[FuseServer]) -> None:
    options = server.options
    async with trio.open_nursery() as nursery:
        server.nursery = nursery

        async def mount(*, task_status: trio.TaskStatus[Path]) -> None:
            await serve_fuse(server.fs, server.fs.mountpoint, task_status=task_status)
            # Unmounted from outside (or the connection aborted): nothing left to serve.
            log.info("fuse server: %s is gone; exiting", server.fs.mountpoint)
            nursery.cancel_scope.cancel()

        await nursery.start(mount)
        control = options.state / CONTROL
        listener, inode = await _listen(control)
        listening = trio.CancelScope()

        async def listen() -> None:
            # Not trio.serve_listeners: a drain stops accepting, while the connections
            # already made (watches, calls in flight) go on in the outer nursery.
            async with listener:
                with listening:
                    while True:
                        try:
                            stream = await listener.accept()
                        except OSError as exc:
                            if exc.errno not in _ACCEPT_LATER:
                                raise
                            await trio.sleep(0.1)  # out of descriptors: try again soon
                            continue
                        nursery.start_soon(server.serve_connection, stream)

        nursery.start_soon(listen)
        log.info("fuse server %d: serving %s, control %s", os.getpid(), server.fs.mountpoint,
                 control)

        def release() -> None:
            # The socket first, then the pid file: a fresh server binds only after.
            listening.cancel()
            _unlink_if_ours(control, inode)
            give_up_names()

        async def drain_then_exit() -> None:
            await _drain_on_signal(server, release)
            nursery.cancel_scope.cancel()

        nursery.start_soon(drain_then_exit)
        if options.exit_when_unused or options.idle_exit_alone:
            nursery.start_soon(_exit_when_unused, server)
        task_status.started(server)
        await server.idle_exit.wait()
        nursery.cancel_scope.cancel()


async def run_fuse_server(options: ServerOptions) -> int:
    """``snapfs fuse-server``: 0 when drained or when another server already runs."""
    await trio.to_thread.run_sync(
        lambda: options.state.mkdir(parents=True, exist_ok=True, mode=0o711))
    try:
        held = lock_pidfiles([options.state / PIDFILE])
    except ContentError as exc:
        log.info("fuse server: not starting: %s", exc)
        return 0
    with held:
        # Its build as loaded now: the code on disk may be upgraded while it serves.
        options = replace(options, build=await trio.to_thread.run_sync(code_build))
        try:
            await serve_fuse_server(options, give_up_names=held.release)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
    return 0


__all__ = ["DRAIN_INTERVAL", "MOUNTPOINTS", "choose_mountpoint", "is_mountpoint_name",
           "mountpoint_name", "run_fuse_server", "serve_fuse_server"]
