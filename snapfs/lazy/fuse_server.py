"""``snapfs fuse-server``: the small, long-lived process that serves ``<root>/fuse``.

The daemon (gRPC, snapshotter, registry, scheduler) restarts, upgrades and crashes; the
kernel keeps a FUSE mount alive only while its server holds ``/dev/fuse``, and running
overlays cannot switch lowerdirs. So the mount lives here, in a process of its own session
(a daemon's SIGTERM or SIGKILL, or systemd's ``KillMode=process``, leaves it running), and
holds only what serving needs: each layer's tree (rebuilt from the TOC the daemon sends,
verified again against the layer's recorded TOC digest), the chunk cache, materialised
directories, and a ``LayerFetcher`` per layer that verifies every fetched chunk against the
TOC before it serves or caches it. Missing compressed ranges come from the daemon, or from
the daemon-less commands using the server (``snapfs.lazy.fetch_peers``):

    kernel ─▶ LayerFS ─▶ LazyLayerView ─▶ LayerFetcher ─▶ DaemonRanges ─fetch.sock─▶ daemon
                          │  (materialised dir)  │ (chunk cache)      └─fetch.d/<pid>.sock─▶ command
                          ▼                      ▼

A read that needs the network while none answers waits for one, up to ``read_timeout``
seconds (then EIO); a read of cached chunks or a materialised layer needs no daemon at all.
Clients drive the server through ``fuse-server.sock`` (``hello``, ``add``, ``update``,
``remove``, ``stats``, ``record``/``stop_record``, ``watch``, and ``exit_if_idle`` from a
client stopping in order; ``snapfs.lazy.fuse_client``); ``add`` of a layer the server
already serves keeps its view (a restarted daemon, or a second command, reconciles; running
containers never notice). Which clients it has is ``snapfs.lazy.server_clients``.

When it exits by itself: a daemon's server when it serves no layer and the daemon stops
in order or is gone; a command's (``exit_when_unused``) once no client watches it and no
mount uses its layers (after ``exit_if_idle`` from the last command, or, when that one was
killed, found so twice in a row). It says ``closing`` in hello from then on and refuses new
layers; the next client starts a fresh server.

The process around it (mountpoint, control socket, pid file, draining, exiting when
unused) is ``snapfs.lazy.server_run``. SIGTERM drains: the server gives up its control socket and
pid file, tells its watchers (who re-add their layers to a fresh server, mounted at
``<root>/fuse.<n>``), and keeps serving until no mount in any namespace uses one of its
layer directories, then unmounts and exits: an upgrade finishes the old server's mounts.
Pid file ``<state>/fuse-server.pid``: one server per state dir, besides draining ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from content.chunkbudget import Limits
from content.chunkcache import ChunkCache
from content.digest import parse_digest
from content.errors import ContentError, InvalidArgument, NotFound, Unavailable
from content.reference import parse_reference
from snapfs.fuse import LayerFS
from snapfs.fuse.inodes import AccessRecorder
from snapfs.lazy import frames
from snapfs.lazy.counters import delta, eviction_counts
from snapfs.lazy.fetch_peers import DaemonRanges, Peers
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.in_use import dir_in_use
from snapfs.lazy.indexer import reload_layer
from snapfs.lazy.layerdb import LayerRecord
from snapfs.lazy.locality import START_WINDOW
from snapfs.lazy.scheduler import FetchScheduler
from snapfs.lazy.server_clients import Clients
from snapfs.lazy.view import LazyLayerView

log = logging.getLogger(__name__)

CONTROL = "fuse-server.sock"
FETCH = "fetch.sock"
PIDFILE = "fuse-server.pid"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    root: Path  # <root>/fuse is the mount, <root>/chunks the cache
    state: Path  # sockets and the pid file
    read_timeout: float = 60.0  # a read waits this long for a daemon, then EIO
    concurrency: int = 8  # ranges asked of the daemon at once
    window: int = START_WINDOW  # [fetch] window: neighbouring bytes a miss fetches along
    limits: Limits = field(default_factory=Limits)  # [cache] bounds of the chunks it stores
    # A daemon-less command's: exit once no process watches it and no mount uses a layer.
    exit_when_unused: bool = False
    # A spawned process: a daemon's server too exits once no client watches it and it
    # serves no layer (its daemon gone before its first lazy layer: no empty mount stays).
    idle_exit_alone: bool = False
    build: str = ""  # the code it loaded (snapfs.lazy.build), told in hello
    settings: tuple[str, ...] = ()  # its command line, told in hello (server_spawn.settings)


class FuseServer:
    """The layers this process serves, and the control requests that change them."""

    def __init__(self, options: ServerOptions, mountpoint: Path | None = None) -> None:
        self.options = options
        # <root>/fuse, or <root>/fuse.<n> while a draining server holds that one.
        self.fs = LayerFS(mountpoint or options.root / "fuse")
        self.cache = ChunkCache(options.root / "chunks", limits=options.limits)
        self.peers = Peers(options.state / FETCH)  # who fetches for it: daemon, commands
        self.ranges = DaemonRanges(options.state / FETCH, options.read_timeout,
                                   peers=self.peers)
        self.clients = Clients()
        self.closing = False  # decided to exit: no new layer, clients start a fresh server
        self.scheduler = FetchScheduler(self.ranges, concurrency=options.concurrency)
        self.views: dict[str, LazyLayerView] = {}
        self._adding: dict[str, trio.Lock] = {}  # by layer id: one add at a time (``add``)
        self.draining = False
        self._evictions_told: dict[str, int] = {}  # the cache's evictions "stats" reported
        self.idle_exit = trio.Event()  # set once unused (``exit_if_idle``, idle watch)
        self.recordings: dict[int, AccessRecorder] = {}
        self._watchers: dict[int, trio.SocketStream] = {}  # told when this server drains
        self._recording_ids = 0
        # Where fetchers fetch a directory aside (snapfs.lazy.locality); set once serving.
        self.nursery: trio.Nursery | None = None

    def hello(self) -> frames.Header:
        return {"protocol": frames.PROTOCOL, "pid": os.getpid(),
                "mountpoint": str(self.fs.mountpoint), "draining": self.draining,
                "closing": self.closing, "build": self.options.build,
                "settings": list(self.options.settings),
                "layers": {i: _view_state(v) for i, v in self.views.items()}}

    async def unused(self, asker: int | None = None) -> bool:
        """Whether nothing needs this process: no client but ``asker`` watches or is
        arriving, and (``exit_when_unused``) no mount uses a layer, else no layer at all."""
        if self.clients.others(asker, trio.current_time()):
            return False
        if not self.options.exit_when_unused:
            return not self.views
        busy = await trio.to_thread.run_sync(self.in_use)
        # Looked again after the thread: a client may have said hello meanwhile.
        return not busy and not self.clients.others(asker, trio.current_time())

    def close(self, why: str) -> None:
        """Decide to exit; from now on hello says so and no layer is added."""
        if not self.closing:
            log.info("fuse server: %s; exiting", why)
        self.closing = True
        self.idle_exit.set()

    async def handle(self, head: frames.Header, body: bytes) -> tuple[frames.Header, bytes]:
        op = head.get("op")
        if op == "hello":
            if isinstance(head.get("pid"), int):
                self.clients.hello(head["pid"], trio.current_time())
            return self.hello(), b""
        if op == "add":
            if self.closing or self.draining:
                raise Unavailable(f"fuse server {os.getpid()}: exiting (unused or draining); "
                                  "ask again")
            return await self.add(head, body), b""
        if op == "exit_if_idle":
            # A client stopping in order: when nothing else needs this process, it goes (the
            # next client starts a fresh one); a daemon's server with layers stays for the
            # next daemon (containers may use them).
            asker = head.get("pid")
            exiting = self.closing or await self.unused(asker if isinstance(asker, int)
                                                        else None)
            if exiting:
                self.close("its last client stopped and nothing uses it")
            return {"exiting": exiting}, b""
        ident = str(head.get("ident", ""))
        if op == "update":
            view = self._view(ident)
            _apply(view, head)
            return {}, b""
        if op == "remove":
            async with self._adding.setdefault(ident, trio.Lock()):  # not under an add
                self._view(ident)
                del self.views[ident]
                await self.fs.remove_layer(ident)
            return {}, b""
        if op == "stats":
            out = {}
            for i, v in self.views.items():
                st = self.fs.stats(i)
                out[i] = {"requests": dict(st.requests), "bytes_read": st.bytes_read,
                          "healthy": st.healthy, "open_handles": st.open_handles,
                          "lookups": st.lookups, "fetched": v.fetcher.stats.bytes_fetched,
                          "window": [v.fetcher.stats.window_chunks,
                                     v.fetcher.stats.window_hits],
                          "last_error": v.last_error}
            # Evictions since the last report: the daemon persists them (a restarted daemon
            # must not count the same ones again).
            now = eviction_counts(self.cache.evictions())
            told, self._evictions_told = self._evictions_told, now
            return {"stats": out, "evictions": delta(now, told)}, b""
        if op == "record":
            self._recording_ids += 1
            layers = head.get("layers")
            self.recordings[self._recording_ids] = self.fs.start_recording(
                None if layers is None else [str(x) for x in layers])
            return {"id": self._recording_ids}, b""
        if op == "stop_record":
            recorder = self.recordings.pop(int(head["id"]), None)
            if recorder is None:
                raise NotFound(f"recording {head.get('id')}: not running")
            accesses = self.fs.stop_recording(recorder)
            return {"accesses": [[a.layer_id, a.path] for a in accesses]}, b""
        raise InvalidArgument(f"fuse server: unknown request {op!r}")

    def _view(self, ident: str) -> LazyLayerView:
        view = self.views.get(ident)
        if view is None:
            raise NotFound(f"layer {ident[:12]}: not served by this FUSE server")
        return view

    async def add(self, head: frames.Header, body: bytes) -> frames.Header:
        ident = str(head["ident"])
        # One add of a layer at a time (the TOC is parsed in a thread; daemon-less commands
        # preparing one layer each send it): the second finds the first's view (``existed``)
        # rather than racing it to the mount ("already mounted" read as "committed").
        async with self._adding.setdefault(ident, trio.Lock()):
            return await self._add(ident, head, body)

    async def _add(self, ident: str, head: frames.Header, body: bytes) -> frames.Header:
        view = self.views.get(ident)
        if view is not None:
            _apply(view, head)
            return {"path": str(self.fs.mountpoint / ident), "existed": True}
        rec = LayerRecord(parse_digest(str(head["digest"])), str(head["ref"]), int(head["size"]),
                          str(head["format"]), parse_digest(str(head["toc_digest"])))
        ranges: dict[int, bytes] = {}
        pos = 0
        for offset, length in head["ranges"]:
            ranges[int(offset)] = body[pos:pos + int(length)]
            pos += int(length)
        # The TOC is verified against its recorded digest again: this process trusts what
        # it serves only as far as the manifest vouches for it.
        layer = await reload_layer(rec, ranges, tail_size=int(head.get("tail_size", 64 * 1024)))
        fetcher = LayerFetcher(self.ranges, parse_reference(rec.ref), rec.digest, layer,
                               self.cache, scheduler=self.scheduler,
                               window=self.options.window, nursery=self.nursery)
        view = LazyLayerView(ident, layer, fetcher, userxattr=bool(head.get("userxattr")))
        _apply(view, head)
        self.fs.add_layer(view)
        self.views[ident] = view
        path = self.fs.mountpoint / ident
        try:
            await fetcher.refresh_cached()
            # From a thread: the lookup it causes is answered by this loop. It leaves the
            # entry in the kernel's cache (entries live 24 h) for the daemon's checks.
            await trio.to_thread.run_sync(os.stat, path)
        except BaseException:
            # Half-added: the client is told it failed, so nothing may stay mounted.
            del self.views[ident]
            with trio.CancelScope(shield=True):
                await self.fs.remove_layer(ident)
            raise
        return {"path": str(path), "existed": False}

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            async for head, body in frames.messages(stream):
                if head.get("op") == "watch":
                    await self._watched(stream, head)
                    return
                try:
                    reply = await self.handle(head, body)
                except ContentError as exc:
                    log.warning("fuse server: %s failed: %s", head.get("op"), exc)
                    reply = frames.error_header(exc), b""
                except (KeyError, TypeError, ValueError) as exc:
                    reply = frames.error_header(InvalidArgument(f"bad request: {exc}")), b""
                try:
                    await frames.send(stream, *reply)
                except (OSError, trio.BrokenResourceError):
                    return

    async def _watched(self, stream: trio.SocketStream, head: frames.Header) -> None:
        """A client's ``watch``: held open for its life (its end sees EOF when this process
        dies; this end when it does). A daemon-less command names where it fetches."""
        conn = id(stream)
        pid = head.get("pid")
        self.clients.watch(conn, pid if isinstance(pid, int) else -1)
        if head.get("fetch"):
            self.peers.add(conn, Path(str(head["fetch"])))
        self._watchers[conn] = stream
        try:
            async for _ in frames.messages(stream):
                pass  # nothing is sent on it: this returns when the client goes
        finally:
            self._watchers.pop(conn, None)
            self.clients.leave(conn)
            self.peers.remove(conn)

    async def tell_draining(self) -> None:
        """Say ``draining`` on every watch: its client moves to a fresh server, and keeps
        watching this one (it still fetches for it) until it exits."""
        for stream in list(self._watchers.values()):
            with contextlib.suppress(OSError, trio.BrokenResourceError, trio.BusyResourceError):
                await frames.send(stream, {"op": "draining", "pid": os.getpid()}, b"")

    def in_use(self) -> bool:
        """Whether any mount, in any namespace, uses one of the layer directories, or a
        file is open (blocking: reads mount tables)."""
        for ident in self.views:
            st = self.fs.stats(ident)
            if st.open_handles or dir_in_use(self.fs.mountpoint / ident, ident):
                return True
        return False


def _view_state(view: LazyLayerView) -> frames.Header:
    return {"local_dir": str(view.local_dir) if view.local_dir else None,
            "broken": view.broken}


def _apply(view: LazyLayerView, head: frames.Header) -> None:
    local = head.get("local_dir")
    if local and view.local_dir is None:
        view.local_dir = Path(str(local))
        view.fetcher.retired = True  # complete: nothing is cached for it again
    broken = head.get("broken")
    if broken and view.broken is None:
        view.broken = str(broken)


__all__ = ["CONTROL", "FETCH", "PIDFILE", "DaemonRanges", "FuseServer", "ServerOptions"]
