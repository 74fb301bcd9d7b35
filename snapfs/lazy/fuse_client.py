"""A client's side of ``snapfs fuse-server`` (the daemon's, or a daemon-less command's):
:class:`RemoteMount` (a ``LayerMount``) and the fetch socket that answers the server's range
requests (``<state>/fetch.sock`` for the daemon; a command's own, named in its ``watch``).

:meth:`RemoteMount.ensure_served` connects to the server of this state dir, or, when none
answers, starts one (``snapfs fuse-server`` in a session of its own, so it outlives this
process) and waits until it serves. Before starting one it looks at the mountpoint: a stale
mount (ENOTCONN) means the previous server died while serving, and what it served is lost
(:attr:`previous_died`; the new server clears the stale mount). A ``watch`` connection is
held open for as long as this process runs: EOF on it means the server died, and
``on_lost`` is told at once (``LazyLayers.server_lost``); the next layer starts a fresh one.
A server that answers ``closing`` (unused, exiting) or ``draining`` counts as none: a fresh
one is started, again until it holds the pid file. A server that drains (an upgrade) says
so on the watch: ``on_drained`` is told (``LazyLayers.server_draining`` moves the layers to
a fresh server, at ``<root>/fuse.<n>``), and the watch stays open (the old server still
fetches through this process) until it exits, which is then no loss. Where each layer is
served is :meth:`RemoteMount.path_of`.

``serve_fetches`` (``snapfs.lazy.fetch_peers``, re-exported here) answers ``fetch``
requests at demand priority through this process's ``FetchScheduler`` (so reads still come
before startup and background fetches) and returns the raw, unverified range: the server
verifies every chunk against the TOC before it serves or caches it.

Must not decide what is mounted (``snapfs.lazy.layers``) nor touch the mount itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from content.errors import ContentError, FailedPrecondition, NotFound, Unavailable
from snapfs.fuse import LayerStats
from snapfs.fuse.inodes import Access
from snapfs.fuse.session import check_dev_fuse, probe
from snapfs.lazy import frames
from snapfs.lazy.build import code_build
from snapfs.lazy.fetch_peers import serve_fetches  # re-exported: clients start both
from snapfs.lazy.fuse_server import CONTROL
from snapfs.lazy.layerdb import LayerRecord, layer_id
from snapfs.lazy.mount import StopRecording
from snapfs.lazy.server_spawn import gone as _gone
from snapfs.lazy.server_spawn import (
    server_argv,  # re-exported: the daemon builds it
    settings,
    spawn_until_answered,
)
from snapfs.lazy.view import LazyLayerView

log = logging.getLogger(__name__)

CALL_TIMEOUT = 60.0  # one control request (an add parses a TOC)


class RemoteMount:
    """``LayerMount`` served by ``snapfs fuse-server`` (see the module docstring)."""

    def __init__(self, root: Path, state: Path, *, nursery: trio.Nursery,
                 server_argv: list[str], userxattr: bool = False,
                 tail_size: int = 64 * 1024, required: bool = False,
                 fetch: Path | None = None, log: Path | None = None) -> None:
        self._mountpoint = root / "fuse"  # the name in records (``path_of``: where now)
        self._served_at = self._mountpoint  # the current server's mountpoint (its hello)
        self._where: dict[str, Path] = {}  # by layer: the mountpoint of the server serving it
        self._control = state / CONTROL
        self._nursery = nursery
        self._argv = server_argv
        self._userxattr = userxattr
        self._tail_size = tail_size
        self._required = required  # refuse (FailedPrecondition) rather than answer False
        self._fetch = fetch  # a daemon-less command's fetch socket, named in its watch
        self._log = log  # the server's output; a command's terminal or pipe must not hold it
        self._closed = False  # close_if_idle let it exit: its end is no loss
        self._no_device: str | None = None  # /dev/fuse cannot be opened: why (said once)
        self._served = False
        self._previous_died = False
        self._lock = trio.Lock()
        self._layers: set[str] = set()
        self._preloaded: set[str] = set()  # indexed ahead by the server, not added yet
        self._stats: dict[str, LayerStats] = {}
        self._errors: dict[str, str] = {}  # each layer's last failed read, as the server saw it
        self._evictions: dict[str, int] = {}  # the server's, since the last take_evictions
        # Per layer: the server's window counters as last reported, and what they added
        # since the last take_window_counts.
        self._window_told: dict[str, tuple[int, int]] = {}
        self._window_new: dict[str, tuple[int, int]] = {}
        self.server_pid: int | None = None
        self.server_build: str | None = None  # set when the server runs another build
        self.on_lost: Callable[[], None] | None = None
        self.on_drained: Callable[[], None] | None = None

    @property
    def mountpoint(self) -> Path:
        return self._mountpoint

    def path_of(self, layer_id: str) -> Path:
        return self._where.get(layer_id, self._served_at) / layer_id

    @property
    def served(self) -> bool:
        return self._served

    @property
    def previous_died(self) -> bool:
        return self._previous_died

    # -- the connection ---------------------------------------------------------------------

    async def _call(self, head: frames.Header, body: bytes = b"") -> frames.Header:
        try:
            with trio.fail_after(CALL_TIMEOUT):
                stream = await trio.open_unix_socket(str(self._control))
                async with stream:
                    await frames.send(stream, head, body)
                    reply = await frames.receive(stream)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise Unavailable(f"fuse server at {self._control}: {head.get('op')}: "
                              f"{exc or type(exc).__name__}") from exc
        if reply is None:
            raise Unavailable(f"fuse server at {self._control}: closed during "
                              f"{head.get('op')}")
        frames.raise_for(reply[0])
        return reply[0]

    async def _hello(self) -> frames.Header | None:
        """The server's hello; None when none answers or the one answering is exiting."""
        try:
            hello = await self._call({"op": "hello", "pid": os.getpid()})
        except Unavailable:
            return None
        if hello.get("closing") or hello.get("draining"):
            # Unused and on its way out, or draining (it gives up the control socket and
            # pid file in a moment): a fresh one takes over.
            return None
        if hello.get("protocol") != frames.PROTOCOL:
            # A server of another protocol: not ours to drive. Its mount holds the
            # mountpoint until it drains (see README: upgrades).
            raise Unavailable(f"fuse server {hello.get('pid')} at {self._control} speaks "
                              f"protocol {hello.get('protocol')}; not using it")
        return hello

    async def ensure_served(self) -> bool:
        async with self._lock:
            if self._served:
                return True
            if self._no_device is not None:
                return self._cannot(self._no_device, said=True)
            try:
                hello = await self._hello()
                if hello is not None:
                    hello = await self._replace_if_older(hello)
                if hello is None:
                    try:
                        # What the server would fail at, said here in one line (once).
                        await trio.to_thread.run_sync(check_dev_fuse)
                    except Unavailable as exc:
                        self._no_device = f"cannot serve {self._mountpoint}: {exc}"
                        return self._cannot(self._no_device)
                    await self._start()
                    hello = await self._hello()
            except (Unavailable, OSError) as exc:
                return self._cannot(f"no FUSE server ({exc})")
            if hello is None:
                return self._cannot(f"no FUSE server answers at {self._control}")
            self.server_pid = int(hello.get("pid", 0)) or None
            self._served_at = Path(str(hello.get("mountpoint") or self._mountpoint))
            self._layers = set(hello.get("layers", {}))
            self._where.update((ident, self._served_at) for ident in self._layers)
            await self._nursery.start(self._watch)
            self._served = True
            log.info("fuse server %s serves %s at %s (%d layer(s) already)", self.server_pid,
                     self._mountpoint, self._served_at, len(self._layers))
            return True

    async def close_if_idle(self) -> None:
        """At an ordered shutdown: a server with no layers exits (nothing uses it; the next
        daemon starts a fresh one). One with layers keeps serving them."""
        if not self._served:
            return
        self.on_lost = None  # its exit is no loss
        with contextlib.suppress(Unavailable):
            reply = await self._call({"op": "exit_if_idle", "pid": os.getpid()})
            if reply.get("exiting"):
                self._closed = True
                log.info("fuse server %s: nothing else uses it; it exits", self.server_pid)
                # Gone (and its mount with it) before this command says it is done.
                await _gone(self.server_pid)

    async def _replace_if_older(self, hello: frames.Header) -> frames.Header | None:
        """A server of another build (an upgrade happened since it started): replaced when
        it serves no layer and no other client (None: start one of this build), else kept
        (same protocol) and named, since containers may read through it."""
        mine = await trio.to_thread.run_sync(code_build)
        theirs, pid = hello.get("build"), hello.get("pid")
        # Started with other options (a daemon restarted with another config, a command's
        # server): only worth replacing while it serves nothing; then as another build.
        told = hello.get("settings")
        other = bool(told) and told != settings(self._argv)
        if theirs == mine and not other:
            return hello
        if not hello.get("layers"):
            reply = await self._call({"op": "exit_if_idle", "pid": os.getpid()})
            if reply.get("exiting"):
                log.info("fuse server %s runs build %s%s, this is %s; it served no layer "
                         "and exits: starting one of this build", pid, theirs,
                         " with other options" if other else "", mine)
                await _gone(pid if isinstance(pid, int) else None)
                return None
        if theirs == mine:
            return hello  # the same code: its options are kept until it is drained
        self.server_build = str(theirs)
        log.warning("fuse server %s runs build %s, this is %s: it keeps serving its %d "
                    "layer(s) and new ones (same protocol); `kill -TERM %s` drains it, then "
                    "the next lazy layer starts this build", pid, theirs, mine,
                    len(hello.get("layers") or {}), pid)
        return hello

    def _cannot(self, why: str, *, said: bool = False) -> bool:
        if self._required:
            raise FailedPrecondition(f"lazy layers: {why}; --lazy=required ([fetch] lazy) "
                                     "refuses a full pull")
        if not said:
            log.warning("lazy layers: %s; pulling in full instead", why)
        return False

    async def _start(self) -> None:
        for mountpoint in {self._mountpoint, self._served_at}:  # the last server's too
            code = await trio.to_thread.run_sync(probe, mountpoint, abandon_on_cancel=True)
            if code == errno.ENOTCONN:
                self._previous_died = True
                log.error("fuse: %s is stale: the FUSE server died; layers it served lazily "
                          "are lost", mountpoint)
        log.info("starting a FUSE server: %s", " ".join(self._argv))
        await spawn_until_answered(self._argv, self._log, self._nursery, self._hello,
                                   str(self._control))

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
        stream = await trio.open_unix_socket(str(self._control))
        pid, drained = self.server_pid, False
        async with stream:
            await frames.send(stream, {"op": "watch", "pid": os.getpid(),
                                       "fetch": str(self._fetch) if self._fetch else None})
            task_status.started()
            # Only "draining" is ever sent; EOF (or a failure) when the server exits.
            with contextlib.suppress(OSError, trio.BrokenResourceError, ContentError):
                while (got := await frames.receive(stream)) is not None:
                    if got[0].get("op") == "draining" and not drained:
                        drained = True
                        self._drained(pid)
        if drained:
            log.info("fuse server %s drained and exited", pid)
            return
        self._served = False
        self._layers.clear()
        self._stats.clear()
        if self._closed:
            return  # it exited because this process let it (close_if_idle)
        self._previous_died = True
        log.error("fuse server %s died: layers it served lazily are lost; the next lazy "
                  "layer gets a fresh server", self.server_pid)
        if self.on_lost is not None:
            self.on_lost()

    def _drained(self, pid: int | None) -> None:
        log.info("fuse server %s drains (an upgrade); new mounts go to a fresh server", pid)
        self._served = False
        self._layers.clear()
        self._stats.clear()
        if self.on_drained is not None:
            self.on_drained()

    # -- LayerMount ---------------------------------------------------------------------------

    async def preload(self, rec: LayerRecord, ranges: Mapping[int, bytes]) -> bool:
        ident = layer_id(rec.digest)
        try:
            reply = await self._add(ident, rec, ranges, None, None)
        except (ContentError, OSError) as exc:
            # This process's own check of the same bytes says why, and fails the Prepare.
            log.info("layer %s: the FUSE server could not index it ahead: %s", ident[:12], exc)
            return False
        if reply.get("existed"):
            return False  # another client's: not this Prepare's to take off on failure
        self._preloaded.add(ident)
        return True

    async def add_layer(self, view: LazyLayerView, rec: LayerRecord,
                        ranges: Mapping[int, bytes]) -> None:
        reply = await self._add(view.layer_id, rec, ranges, view.local_dir, view.broken)
        if reply.get("existed") and view.layer_id not in self._preloaded:
            log.info("layer %s: the FUSE server still serves it", view.layer_id[:12])
        self._preloaded.discard(view.layer_id)

    async def _add(self, ident: str, rec: LayerRecord, ranges: Mapping[int, bytes],
                   local_dir: Path | None, broken: str | None) -> frames.Header:
        offsets = sorted(ranges)
        head = {"op": "add", "ident": ident, "digest": str(rec.digest),
                "ref": rec.ref, "size": rec.size, "format": rec.format,
                "toc_digest": str(rec.toc_digest), "tail_size": self._tail_size,
                "userxattr": self._userxattr, "ranges": [[o, len(ranges[o])] for o in offsets],
                "local_dir": str(local_dir) if local_dir else None, "broken": broken}
        reply = await self._call(head, b"".join(ranges[o] for o in offsets))
        self._layers.add(ident)
        if reply.get("path"):
            self._where[ident] = Path(str(reply["path"])).parent
        return reply

    async def update_layer(self, view: LazyLayerView) -> None:
        try:
            await self._call({"op": "update", "ident": view.layer_id,
                              "local_dir": str(view.local_dir) if view.local_dir else None,
                              "broken": view.broken})
        except (Unavailable, NotFound) as exc:
            log.warning("layer %s: telling the FUSE server failed: %s", view.layer_id[:12], exc)

    async def remove_layer(self, layer_id: str) -> None:
        self._layers.discard(layer_id)
        self._preloaded.discard(layer_id)
        self._where.pop(layer_id, None)
        with contextlib.suppress(NotFound):
            await self._call({"op": "remove", "ident": layer_id})

    def layer_ids(self) -> list[str]:
        return sorted(self._layers)

    def stats(self, layer_id: str) -> LayerStats:
        st = self._stats.get(layer_id)
        if st is None:
            raise NotFound(f"layer {layer_id}: not on the FUSE server")
        return st

    async def refresh(self) -> None:
        if not self._served:
            return
        try:
            reply = await self._call({"op": "stats"})
        except Unavailable as exc:
            log.info("fuse server stats: %s", exc)
            return
        self._stats = {
            ident: LayerStats(ident, dict(s["requests"]), int(s["bytes_read"]),
                              bool(s["healthy"]), int(s["open_handles"]), int(s["lookups"]))
            for ident, s in reply.get("stats", {}).items()}
        self._errors = {ident: str(s.get("last_error") or "")
                        for ident, s in reply.get("stats", {}).items()}
        for name, n in reply.get("evictions", {}).items():
            self._evictions[name] = self._evictions.get(name, 0) + int(n)
        for ident, s in reply.get("stats", {}).items():
            if "window" not in s:
                continue  # a server of an older release
            now = (int(s["window"][0]), int(s["window"][1]))
            told = self._window_told.get(ident, (0, 0))
            if now[0] < told[0] or now[1] < told[1]:
                told = (0, 0)  # a view made again (a new server): it counts from zero
            self._window_told[ident] = now
            new = self._window_new.get(ident, (0, 0))
            self._window_new[ident] = (new[0] + now[0] - told[0], new[1] + now[1] - told[1])

    def last_error(self, layer_id: str) -> str:
        return self._errors.get(layer_id, "")

    def take_evictions(self) -> dict[str, int]:
        out, self._evictions = self._evictions, {}
        return out

    def take_window_counts(self) -> dict[str, tuple[int, int]]:
        out, self._window_new = self._window_new, {}
        return out

    async def record(self, layers: Sequence[str]) -> StopRecording:
        reply = await self._call({"op": "record", "layers": list(layers)})
        token = reply["id"]

        async def stop() -> list[Access]:
            got = await self._call({"op": "stop_record", "id": token})
            return [Access(str(layer), str(path)) for layer, path in got["accesses"]]

        return stop


__all__ = ["RemoteMount", "serve_fetches", "server_argv"]
