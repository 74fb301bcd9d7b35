"""The one bridge between grpcio's threaded server and the trio loop the daemon runs in.

grpcio serves each call on a thread of its ``ThreadPoolExecutor``; the snapshotter is async
and lives in the trio loop. A handler thread hands its coroutine to the loop through a
``TrioPortal`` (``trio.from_thread.run`` with the loop's token) and blocks until it is done.
``serve_grpc`` owns the server's lifetime: bind, report started, and on cancellation a
graceful stop in which in-flight calls finish while the loop keeps running them.

Must not know the snapshots API: the servicer does; this runs it and maps its errors.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import trio

from snapfs.api.wire import socket_path
from snapfs.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_MODE = 0o660  # containerd (root) and the socket's group may connect; nobody else
DEFAULT_GRACE = 10.0  # seconds in-flight calls get to finish on shutdown
DEFAULT_WORKERS = 16


class GrpcServicer(Protocol):
    """Something that registers its handlers on a grpc server (e.g. SnapshotsServicer)."""

    def add_to_server(self, server: grpc.Server) -> None: ...


class TrioPortal:
    """Runs async functions in the trio loop on behalf of grpcio's handler threads.

    Construct it inside the loop. It counts calls in flight so that shutdown can wait for
    them before the snapshotter underneath is closed.
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call from a non-trio thread: run ``afn(*args)`` in the loop and return its result."""

        async def tracked() -> T:
            self._enter()
            try:
                return await afn(*args)
            finally:
                self._leave()

        try:
            return trio.from_thread.run(tracked, trio_token=self._token)
        except trio.RunFinishedError as exc:
            raise Unavailable("snapfs daemon: shutting down") from exc

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def wait_idle(self) -> None:
        """Return once no call started through this portal is still running."""
        await self._idle.wait()

    def _enter(self) -> None:
        self._in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()


def remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse if one is still serving on it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"socket {path}: exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise FailedPrecondition(f"socket {path}: another server is listening on it")
    finally:
        probe.close()
    log.info("removing stale socket %s", path)
    path.unlink(missing_ok=True)


def _bind(servicer: GrpcServicer, path: Path, workers: int) -> grpc.Server:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapfs-grpc")
    )
    servicer.add_to_server(server)
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise FailedPrecondition(f"socket {path}: grpc could not bind it")
    # gRPC binds the socket when the port is added and accepts from start(): set its mode in
    # between, so no client (nor a readiness probe) ever sees it with the umask's mode.
    os.chmod(path, SOCKET_MODE)
    server.start()
    return server


async def serve_grpc(
    servicer: GrpcServicer,
    address: str,
    *,
    portal: TrioPortal | None = None,
    grace: float = DEFAULT_GRACE,
    workers: int = DEFAULT_WORKERS,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``servicer`` on the unix socket ``address`` until cancelled.

    Reports the socket path as started once it accepts connections. On cancellation the
    server stops accepting calls, in-flight calls get ``grace`` seconds to finish, and (with
    ``portal``) their trio halves are awaited, so the caller can then close what they use.
    """
    path = socket_path(address)
    server = await trio.to_thread.run_sync(_bind, servicer, path, workers)
    try:
        task_status.started(path)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True) as scope:
            # grpc's own grace, then a little more for the trio side to unwind.
            scope.deadline = trio.current_time() + grace + 5.0
            stopped = server.stop(grace)
            await trio.to_thread.run_sync(stopped.wait, abandon_on_cancel=True)
            if portal is not None:
                await portal.wait_idle()
            path.unlink(missing_ok=True)
        log.info("grpc server on %s stopped", path)
