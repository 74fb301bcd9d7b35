"""Running one container to completion under runc, and cleaning up after killed runs.

``run_container`` creates and starts the container itself (rather than ``runc run``) so
that it can own the console: with a tty, runc hands us the pty master over
``--console-socket``. To learn the exit status of a container started that way we make
this process a child subreaper: when ``runc create`` exits, the container's init is
reparented to us, and we wait on it through a pidfd.

Bundles live at ``<bundles_root>/<container id>``; ``cleanup_stale`` relies on that.

Must not build bundles or mount a rootfs: the caller hands in a ready bundle.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import tempfile
import termios
import tty as _tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import trio

from runtime.bundle import is_stale, remove_bundle
from runtime.errors import ContentError, Internal, NotFound
from runtime.runc import Runc

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Bounds on teardown work that must finish even when we were cancelled.
CLEANUP_TIMEOUT = 30.0
# Output still buffered in the pty when the container exits gets this long to drain.
DRAIN_TIMEOUT = 5.0
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants (a container's init, once runc exits) our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise Internal(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


async def _wait_exit(pidfd: int) -> int:
    """Wait for the process behind ``pidfd`` (our child) and reap it: its exit status."""
    await trio.lowlevel.wait_readable(pidfd)
    result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    if result is None:  # only with WNOHANG; here the process has exited
        raise Internal("waitid returned no status for an exited container")
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return 128 + result.si_status


async def _receive_fd(listener: trio.socket.SocketType) -> int:
    """Accept one connection and return the fd it passes with SCM_RIGHTS."""
    conn, _ = await listener.accept()
    with conn:
        fds = array.array("i")
        _, ancdata, _, _ = await conn.recvmsg(4096, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not fds:
        raise Internal("console socket: runc sent no file descriptor")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


async def _create_with_console(runc: Runc, container_id: str, bundle: Path) -> int:
    """``runc create`` with a console socket; returns the pty master runc sends us."""
    received: list[int] = []
    # A short path: unix socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="snapfs-con-") as tmp:
        path = Path(tmp) / "sock"
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            await listener.bind(str(path))
            listener.listen(1)

            async def receive() -> None:
                received.append(await _receive_fd(listener))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await runc.create(container_id, bundle, console_socket=path)
                # runc sends the console before create returns; don't wait forever if not.
                nursery.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT
    if not received:
        raise Internal(f"container {container_id}: runc did not send the console")
    return received[0]


def _copy_winsize(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def _raw_mode(fd: int) -> Iterator[None]:
    """Put our terminal in raw mode so keys reach the container's pty unprocessed."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    _tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _pump(src: trio.lowlevel.FdStream, dst: trio.lowlevel.FdStream) -> None:
    # EIO from the pty master means every slave fd is closed: the container is gone.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while data := await src.receive_some(65536):
            await dst.send_all(data)


async def _serve_signals(
    runc: Runc, container_id: str, signals: AsyncIterator[int], console: tuple[int, int] | None,
    forwarded: Callable[[int], None],
) -> None:
    async for signum in signals:
        if signum == signal.SIGWINCH:
            if console is not None:
                _copy_winsize(*console)
            continue
        log.info("container %s: forwarding signal %d", container_id, signum)
        try:
            await runc.kill(container_id, signum)
        except ContentError as e:
            log.warning("container %s: forwarding signal %d: %s", container_id, signum, e)
        forwarded(signum)


async def _enforce(container_id: str, pidfd: int, signum: int, timeout: float,
                   forced: list[int]) -> None:
    """SIGKILL the container if it outlives ``timeout`` after being sent ``signum``.

    A container's init is pid 1 of its namespace: the kernel drops every signal it has no
    handler for (``sleep 100`` ignores SIGTERM), so a forwarded signal alone may never end it.
    """
    await trio.sleep(timeout)
    log.info("container %s: still running %.1fs after signal %d: killing it",
             container_id, timeout, signum)
    forced.append(signum)
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


async def run_container(
    runc: Runc,
    container_id: str,
    bundle: Path,
    *,
    tty: bool,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    stop_timeout: float | None = None,
    on_start: Callable[[], None] | None = None,
) -> int:
    """Run the container in ``bundle`` until it exits; its status (128+n if killed by n).

    Signals SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to us are forwarded to the container. With
    ``stop_timeout``, a container still running that long after the first forwarded signal
    is killed, and its status is reported as 128+that signal (as ``docker stop`` enforces a
    stop; the container was ended because of that signal). Fds default to our own.
    However this ends — exit, exception, cancellation — the container is killed and deleted
    and the bundle removed. ``tty`` must match the spec's ``process.terminal``.
    ``on_start`` is called once the container runs (``runc start`` returned).
    """
    become_subreaper()
    pidfd: int | None = None
    master: int | None = None
    reaped = False
    # FdStreams put their fds in non-blocking mode (shared with our terminal) until closed.
    streams: list[trio.lowlevel.FdStream] = []
    try:
        if tty:
            master = await _create_with_console(runc, container_id, bundle)
        else:
            await runc.create(container_id, bundle, stdin=stdin, stdout=stdout, stderr=stderr)
        state = await runc.state(container_id)
        pidfd = os.pidfd_open(int(state["pid"]))
        in_fd = 0 if stdin is None else stdin
        out_fd = 1 if stdout is None else stdout
        console = (in_fd, master) if master is not None else None
        wanted = (*FORWARDED_SIGNALS, *((signal.SIGWINCH,) if tty else ()))
        forced: list[int] = []
        with trio.open_signal_receiver(*wanted) as signals, _raw_mode(in_fd if tty else -1):
            async with trio.open_nursery() as nursery:

                def forwarded(signum: int) -> None:
                    if stop_timeout is not None and pidfd is not None and not armed:
                        armed.append(signum)
                        nursery.start_soon(_enforce, container_id, pidfd, signum, stop_timeout,
                                           forced)

                armed: list[int] = []
                nursery.start_soon(_serve_signals, runc, container_id, signals, console,
                                   forwarded)
                drained = trio.Event()
                if master is not None:
                    _copy_winsize(in_fd, master)
                    pty, user_in, user_out = (
                        trio.lowlevel.FdStream(os.dup(fd)) for fd in (master, in_fd, out_fd)
                    )
                    streams += [pty, user_in, user_out]
                    nursery.start_soon(_pump, user_in, pty)

                    async def drain() -> None:
                        await _pump(pty, user_out)
                        drained.set()

                    nursery.start_soon(drain)
                else:
                    drained.set()
                await runc.start(container_id)
                if on_start is not None:
                    on_start()
                status = await _wait_exit(pidfd)
                reaped = True
                if forced and status == 128 + signal.SIGKILL:
                    status = 128 + forced[0]
                with trio.move_on_after(DRAIN_TIMEOUT):
                    await drained.wait()
                nursery.cancel_scope.cancel()
        log.info("container %s exited with status %d", container_id, status)
        return status
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
            for stream in streams:
                await stream.aclose()
            await _teardown(runc, container_id, bundle, pidfd if not reaped else None)
        for fd in (pidfd, master):
            if fd is not None:
                os.close(fd)


async def _teardown(runc: Runc, container_id: str, bundle: Path, live_pidfd: int | None) -> None:
    if live_pidfd is not None:
        # The pidfd names exactly our container's init, so this cannot hit a reused pid.
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(live_pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            await _wait_exit(live_pidfd)
    try:
        await runc.delete(container_id, force=True)
    except NotFound:
        pass
    except ContentError as e:
        log.warning("container %s: %s", container_id, e)
    await trio.to_thread.run_sync(remove_bundle, bundle)


async def cleanup_stale(runc: Runc, bundles_root: Path) -> list[str]:
    """Delete containers and bundles left behind by snapfs processes that no longer exist.

    A bundle whose owner is alive is left alone. Returns the ids cleaned up.
    """
    containers = {c["id"]: c for c in await runc.list()}
    root = bundles_root.resolve()
    stale: set[str] = set()
    if root.is_dir():
        for bundle in root.iterdir():
            if bundle.is_dir() and is_stale(bundle):
                stale.add(bundle.name)
    # Containers of ours whose bundle is already gone.
    for cid, c in containers.items():
        path = Path(str(c.get("bundle", "")))
        if path.parent == root and not path.exists():
            stale.add(cid)
    for cid in sorted(stale):
        if cid in containers:
            with contextlib.suppress(NotFound):
                await runc.delete(cid, force=True)
        await trio.to_thread.run_sync(remove_bundle, root / cid)
        log.info("cleaned up stale container %s", cid)
    return sorted(stale)
