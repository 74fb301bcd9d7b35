"""Who answers the FUSE server's requests for compressed ranges, and how it asks them.

``snapfs fuse-server`` holds no registry client: a process that has one fetches for it, on a
unix socket speaking ``snapfs.lazy.frames`` (``{"op": "fetch", ...}`` → the raw range):

- the daemon (``snapfs serve``) on ``<state>/fetch.sock``;
- each daemon-less command using the server (the embedded engine of ``snapfs run``,
  ``pull``, a ``run -d`` supervisor) on a socket of its own, named in its ``watch``
  connection (:class:`Peers`); it leaves with its command, so the next read asks another.

A read that needs the network asks the daemon first, then the commands, the one that
answered last first; while none answers it waits (a daemon may be restarting), up to
``read_timeout`` per range, then fails that read alone (EIO; the next read tries again).
Whatever comes back is unverified: the server's fetcher checks every chunk against the TOC.

The answering side is :func:`serve_fetches` (in the daemon and in each command).

Must not verify, cache or schedule: it only carries ranges.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from content.digest import Digest, parse_digest
from content.errors import ContentError, InvalidArgument, Unavailable
from content.reference import Reference, parse_reference
from snapfs.lazy import frames
from snapfs.lazy.scheduler import FetchScheduler

log = logging.getLogger(__name__)


class Peers:
    """The daemon's fetch socket and those the watching commands named (by connection)."""

    def __init__(self, daemon: Path) -> None:
        self.daemon = daemon
        self._commands: dict[int, Path] = {}  # watch connection id → its fetch socket
        self._last: Path | None = None  # the socket that answered last

    def add(self, conn: int, path: Path) -> None:
        self._commands[conn] = path

    def remove(self, conn: int) -> None:
        self._commands.pop(conn, None)

    def candidates(self) -> list[Path]:
        """Where to ask, in order: the daemon, the command that answered last, the rest."""
        rest = sorted(set(self._commands.values()), key=lambda p: p != self._last)
        return [self.daemon, *rest]

    def answered(self, path: Path) -> None:
        self._last = path


class DaemonRanges:
    """``RangeSource`` that asks :class:`Peers` for compressed ranges, waiting for one to
    answer up to ``read_timeout`` per range."""

    def __init__(self, path: Path, read_timeout: float, *, peers: Peers | None = None) -> None:
        self.path = path
        self.read_timeout = read_timeout
        self.peers = peers or Peers(path)
        self.waits = 0  # ranges that had to wait for someone to answer (tests, logs)

    async def _ask(self, path: Path, header: frames.Header) -> tuple[frames.Header, bytes] | None:
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError:
            return None
        async with stream:
            try:
                await frames.send(stream, header)
                return await frames.receive(stream)
            except (OSError, trio.BrokenResourceError, Unavailable):
                return None  # it went away mid-answer: ask the next one

    async def _ask_any(self, header: frames.Header) -> tuple[frames.Header, bytes] | None:
        for path in self.peers.candidates():
            reply = await self._ask(path, header)
            if reply is not None:
                self.peers.answered(path)
                return reply
        return None

    async def fetch_range(self, ref: Reference, digest: object, offset: int,
                          length: int) -> bytes:
        header = {"op": "fetch", "ref": str(ref), "blob": str(digest), "offset": offset,
                  "length": length}
        delay, waited = 0.02, False
        with trio.move_on_after(self.read_timeout):
            while True:
                reply = await self._ask_any(header)
                if reply is not None:
                    head, body = reply
                    frames.raise_for(head)
                    if len(body) != length:
                        raise Unavailable(f"blob {digest} at {offset}: fetcher answered "
                                          f"{len(body)} of {length} bytes")
                    if waited:
                        log.info("blob %s at %d: a fetcher answered again", digest, offset)
                    return body
                if not waited:
                    waited = True
                    self.waits += 1
                    log.warning("blob %s at %d: no daemon at %s and no snapfs command "
                                "answers; waiting up to %.0f s", digest, offset, self.path,
                                self.read_timeout)
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise Unavailable(f"blob {digest} at {offset}+{length}: no snapfs daemon answered at "
                          f"{self.path} (nor a snapfs command) within "
                          f"{self.read_timeout:.0f} s ([fetch] read_timeout)")


CountDemand = Callable[[Digest, int], None]


async def serve_fetches(scheduler: FetchScheduler, path: Path, count: CountDemand, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
    """Answer the FUSE server's range requests on ``path`` until cancelled: at demand
    priority through ``scheduler``, the raw range (the server verifies it)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(64)

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            async for head, _ in frames.messages(stream):
                body = b""
                try:
                    if head.get("op") != "fetch":
                        raise InvalidArgument(f"fetch socket: unknown request {head.get('op')!r}")
                    blob = parse_digest(str(head["blob"]))
                    body = await scheduler.fetch(parse_reference(str(head["ref"])), blob,
                                                 int(head["offset"]), int(head["length"]),
                                                 "demand")
                    count(blob, len(body))
                    reply: frames.Header = {}
                except ContentError as exc:
                    reply = frames.error_header(exc)
                except (KeyError, ValueError) as exc:
                    reply = frames.error_header(InvalidArgument(f"bad request: {exc}"))
                try:
                    await frames.send(stream, reply, body)
                except (OSError, trio.BrokenResourceError):
                    return

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, one, [trio.SocketListener(sock)])
            task_status.started()
    finally:
        with trio.CancelScope(shield=True):
            path.unlink(missing_ok=True)


__all__ = ["CountDemand", "DaemonRanges", "Peers", "serve_fetches"]
