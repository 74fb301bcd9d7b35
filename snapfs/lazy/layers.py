"""Remote (lazy) layers: the snapshotter's ``RemoteLayers`` seam, backed by FUSE.

A Prepare carrying ``containerd.io/snapshot.ref`` reaches :meth:`LazyLayers.prepare_remote`:

1. the image reference and layer digest come from the labels — containerd's CRI set
   (``cri.image-ref``, ``cri.layer-digest``) or stargz's (``remote/stargz.reference``,
   ``remote/stargz.digest``); without them the layer is native (None);
2. the blob's size (HEAD), then its tail (a Range request, large enough that a small TOC
   arrives with the footer); ``load_lazy_layer`` decides: None → a plain layer, native;
3. otherwise the layer is recorded in ``layers.lmdb`` (the ranges its index came from), its
   :class:`LazyLayerView` is added to the one FUSE mount at ``<root>/fuse``, and the layer's
   directory is returned for the snapshotter to commit as the snapshot's lowerdir.

Errors, chosen so that containerd (or ``snapfs pull``) reports what went wrong:

- a registry that does not answer within ``timeout`` → Unavailable (never a hang);
  unreachable or 5xx after retries → Unavailable;
- a blob this daemon cannot see (NotFound, Unauthorized: the client may hold credentials we
  lack) → native path, logged;
- a layer that claims to be lazy (its footer parses) but whose TOC is malformed or does not
  verify → InvalidArgument naming the layer and the cause. Falling back to native would hide
  a broken image behind a slow pull, and the same blob fails a stargz-aware client anyway.

Once mounted, each layer's startup set is fetched, then (``[fetch] background``) the rest of
it (``snapfs.lazy.schedule``); a layer whose every chunk is local is materialised into
``<root>/layers/<id>`` (``snapfs.lazy.materialize``) and recorded as local. Snapshot records keep
naming the layer's FUSE directory; the snapshotter resolves it through :meth:`lowerdir`, so
every later mount uses the materialised directory: an image whose layers are all local
mounts as a plain kernel overlay. Mounts made before keep their FUSE lowerdir, and the FUSE
directory is dropped only when no mount in any mount namespace uses it (:meth:`sweep`, on
each materialisation, each release and every ``release_interval``). When containerd's GC
removes the last snapshot of a layer, :meth:`release_remote` forgets it (chunks stay cached).

At startup (``snapfs.lazy.open.open_lazy_layers``) materialised layers are used from their
directories; every other recorded layer is re-indexed from its recorded ranges (no network)
and added to the mount before anything is served, so committed lazy snapshots' lowerdirs
exist again after a restart or a crash.

Nothing on the trio loop that serves FUSE may touch the mount with blocking I/O: the loop
would wait for a reply only it can send. A new layer directory is stat'ed once from a worker
thread, which leaves its entry in the kernel's cache (entries live 24 h) for code that does.

Past 500 lines because a layer's life (lazy, fetching, local, released) is one state machine
over the same maps; the pure parts live in ``snapfs.lazy.source`` and ``snapfs.lazy.schedule``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.digest import Digest, parse_digest
from content.errors import (
    ContentError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from content.lazyformat import LazyLayer, load_lazy_layer, prefetch_set
from content.reference import parse_reference
from snapfs.fuse import LayerFS, serve_fuse
from snapfs.lazy.fetcher import MAX_SPAN, FetchStats, LayerFetcher
from snapfs.lazy.in_use import dir_in_use
from snapfs.lazy.layerdb import LayerDB, LayerRecord, LocalRecord
from snapfs.lazy.materialize import Cancelled, materialize_layer, remove_dir
from snapfs.lazy.schedule import (
    FetchOptions,
    TokenBucket,
    fetch_background,
    fetch_startup,
    startup_paths,
)
from snapfs.lazy.source import LayerSource, Recorder, layer_id, layer_source
from snapfs.lazy.view import LazyLayerView

log = logging.getLogger(__name__)

TAIL_SIZE = 64 * 1024  # the first read: footer, and the TOC of a small layer with it
# Materialising is disk-bound (writing a whole layer): one at a time leaves the disk to reads.
MATERIALIZE_LIMITER = trio.CapacityLimiter(1)


@dataclass(frozen=True, slots=True)
class LayerStatus:
    """One lazy layer as ``snapfs status`` shows it."""

    layer_id: str
    digest: str
    ref: str
    format: str
    state: str  # "lazy" | "fetching" | "local" (local = materialised, on the hot path)
    total_bytes: int  # sum of the layer's regular-file sizes (uncompressed)
    local_bytes: int  # of those, bytes whose chunks are in the cache
    stats: FetchStats  # requests, bytes_fetched, cache_hits, … (snapfs/fetcher.py)
    path: str  # current lowerdir: the FUSE dir or the materialised dir


class LazyLayers:
    """``snapfs.snapshot.snapshotter.RemoteLayers`` over one :class:`LayerFS`.

    The FUSE mount is started in ``nursery`` when the first lazy layer needs it (so a root
    with no lazy layers has no mount); with ``nursery=None`` layers are only added to ``fs``
    and no fetch is scheduled (unit tests). A process that cannot serve the mount pulls
    natively. Each mounted layer gets one task in ``nursery`` (``_layer_task``): startup set,
    background fetch, materialisation.
    """

    def __init__(self, source: LayerSource, fs: LayerFS, db: LayerDB, cache: ChunkCache, *,
                 nursery: trio.Nursery | None = None, options: FetchOptions | None = None,
                 timeout: float | None = None, tail_size: int = TAIL_SIZE,
                 concurrency: int | None = None, userxattr: bool = False,
                 layers_dir: Path | None = None) -> None:
        options = options or FetchOptions()
        self.source = source
        self.fs = fs
        self.db = db
        self.cache = cache
        self.options = options
        self.layers_dir = layers_dir or fs.mountpoint.parent / "layers"
        self._nursery = nursery
        self._mounted = False
        self._mount_failed = False
        self._mount_lock = trio.Lock()
        self._timeout = timeout if timeout is not None else options.prepare_timeout
        self._tail_size = tail_size
        self._userxattr = userxattr
        self._limiter = trio.CapacityLimiter(concurrency or options.concurrency)
        self._bg_limiter = trio.CapacityLimiter(options.background_concurrency)
        self._bucket = TokenBucket(options.background_rate, burst=max(
            options.background_rate, MAX_SPAN))
        self._locks: dict[Digest, trio.Lock] = {}
        self._records: dict[str, LayerRecord] = {}  # every known layer, by id
        self._views: dict[str, LazyLayerView] = {}  # layers with a FUSE directory
        self._local: dict[str, Path] = {}  # materialised layers: their directory
        self._totals: dict[str, int] = {}
        self._stats: dict[str, FetchStats] = {}
        self._fetching: set[str] = set()
        self._profiles: dict[str, list[str]] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._startup: dict[str, trio.Event] = {}
        # FUSE dirs to drop once unused, with the time they stopped being handed out.
        self._unused_fuse: dict[str, float] = {}
        self._doomed: dict[str, Path] = {}  # released: delete the dir once unused
        self._sweep_lock = trio.Lock()
        self.stop = threading.Event()  # set at shutdown: a materialising thread gives up

    # -- inspection ---------------------------------------------------------------------------

    def views(self) -> dict[str, LazyLayerView]:
        return dict(self._views)

    def stats(self) -> dict[str, FetchStats]:
        """Fetch counters per known layer id."""
        return {i: self._stats[i] for i in self._records if i in self._stats}

    def fetcher(self, digest: Digest) -> LayerFetcher:
        view = self._views.get(layer_id(digest))
        if view is None:
            raise NotFound(f"layer {digest}: not a mounted lazy layer")
        return view.fetcher

    def layer_status(self) -> list[LayerStatus]:
        out = []
        for ident, rec in sorted(self._records.items()):
            view = self._views.get(ident)
            local = self._local.get(ident)
            if local is not None or view is None:
                total = self._totals.get(ident, 0)
                state, have, path = "local", total, str(local or "")
            else:
                total, have = view.fetcher.total_bytes, view.fetcher.local_bytes()
                state = "fetching" if ident in self._fetching else "lazy"
                path = str(self.fs.mountpoint / ident)
            out.append(LayerStatus(ident, str(rec.digest), rec.ref, rec.format, state, total,
                                   have, self._stats.get(ident, FetchStats()), path))
        return out

    def is_local(self, layer_id_or_digest: str) -> bool:
        return self._ident(layer_id_or_digest) in self._local

    async def wait_startup(self, layer_id_or_digest: str) -> None:
        """Until the layer's startup set is local (or its fetch gave up)."""
        event = self._startup.get(self._ident(layer_id_or_digest))
        if event is not None:
            await event.wait()

    def _ident(self, key: str) -> str:
        if ":" in key:
            with contextlib.suppress(InvalidArgument):
                return layer_id(parse_digest(key))
        return key

    # -- the RemoteLayers seam ----------------------------------------------------------------

    def lowerdir(self, lower: str) -> str:
        """Where a committed lazy snapshot's files are now: the materialised directory once
        its layer is local, else ``lower`` (the layer's FUSE directory) unchanged."""
        path = Path(lower)
        if path.parent != self.fs.mountpoint:
            return lower
        local = self._local.get(path.name)
        return str(local) if local is not None else lower

    def set_startup_paths(self, layer_id_or_digest: str, paths: Sequence[str]) -> None:
        """A recorded profile's paths for a layer: its startup set when it has no landmark.
        A layer that is mounted and still lazy fetches them at once."""
        ident = self._ident(layer_id_or_digest)
        self._profiles[ident] = list(paths)
        view = self._views.get(ident)
        if (view is not None and self._nursery is not None and ident not in self._local
                and prefetch_set(view.layer) is None and paths):
            self._nursery.start_soon(self._prefetch_profile, view, list(paths))

    async def _prefetch_profile(self, view: LazyLayerView, paths: list[str]) -> None:
        try:
            await fetch_startup(view.fetcher, paths)
        except (ContentError, OSError) as exc:
            log.warning("%s: prefetching a profile's %d file(s) failed: %s",
                        view.fetcher.what, len(paths), exc)

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> str | None:
        source = layer_source(labels)
        if source is None:
            return None
        ref, digest = source
        ident = layer_id(digest)
        lock = self._locks.setdefault(digest, trio.Lock())
        async with lock:
            if ident in self._records:
                log.info("snapshot %s: layer %s is already mounted lazily", key, digest.short())
                return str(self.fs.mountpoint / ident)
            what = f"layer {digest.short()} of {ref}"
            recorder = Recorder(self.source, ref, digest)
            try:
                with trio.fail_after(self._timeout):
                    size = await self.source.blob_size(ref, digest)
                    layer = await load_lazy_layer(recorder, size, what=what,
                                                  tail_size=self._tail_size)
            except trio.TooSlowError:
                raise Unavailable(f"{what}: the registry did not answer within "
                                  f"{self._timeout:g} s") from None
            except (NotFound, Unauthorized) as exc:
                log.warning("snapshot %s: %s: cannot index it here (%s); unpacking natively",
                            key, what, exc)
                return None
            if layer is None:
                log.info("snapshot %s: %s is not a lazy format; unpacking natively", key, what)
                return None
            if not await self._ensure_mounted():
                return None
            rec = self.db.put(LayerRecord(digest, str(ref), size, layer.format,
                                          layer.toc_digest), recorder.ranges)
            path = await self._add(rec, layer)
            log.info("snapshot %s: %s mounted lazily (%s, %d files) at %s", key, what,
                     layer.format, len(layer.files), path)
            return str(path)

    async def release_remote(self, lower: str) -> None:
        """No snapshot uses the layer at ``lower`` any more (containerd's GC removed it): stop
        its fetches, forget its record, and drop its FUSE directory and materialised
        directory once no mount uses them. Its chunks stay in the (shared) cache."""
        path = Path(lower)
        ident = path.name
        rec = self._records.pop(ident, None) if path.parent == self.fs.mountpoint else None
        if rec is None:
            return
        scope = self._scopes.pop(ident, None)
        if scope is not None:
            scope.cancel()
        self.db.remove(rec.digest)
        local = self._local.pop(ident, None)
        if local is not None:
            self._doomed[ident] = local
        if ident in self._views:
            self._unused_fuse[ident] = -math.inf  # no snapshot left to mount it
        self._stats.pop(ident, None)
        self._totals.pop(ident, None)
        self._profiles.pop(ident, None)
        log.info("layer %s released (no snapshot uses it)", rec.digest.short())
        await self.sweep()

    async def restore(self) -> int:
        """Bring back every recorded layer: materialised ones from their directory, the
        others re-added to the mount from their recorded ranges; returns how many."""
        restored = 0
        records = self.db.all()
        lazy = []
        for rec in records:
            ident = layer_id(rec.digest)
            if ident in self._records:
                continue
            local = self.db.local(rec.digest)
            if local is not None and (self.layers_dir / local.dir).is_dir():
                self._records[ident] = rec
                self._local[ident] = self.layers_dir / local.dir
                self._totals[ident] = local.total_bytes
                self._stats[ident] = FetchStats()
                restored += 1
            else:
                lazy.append(rec)
        if lazy and not await self._ensure_mounted():
            log.error("restore: %d lazy layer(s) recorded but %s cannot be served; snapshots "
                      "on them will not mount", len(lazy), self.fs.mountpoint)
            return restored
        for rec in lazy:
            ref = parse_reference(rec.ref)
            what = f"layer {rec.digest.short()} of {rec.ref}"
            replay = Recorder(None, ref, rec.digest, self.db.ranges(rec.digest))
            try:
                layer = await load_lazy_layer(replay, rec.size, what=what,
                                              toc_digest=rec.toc_digest,
                                              tail_size=self._tail_size)
                if layer is None:
                    raise InvalidArgument(f"{what}: recorded ranges hold no lazy footer")
                await self._add(rec, layer)
            except ContentError as exc:
                # One bad record must not keep the others (and the daemon) down; snapshots
                # on this layer fail to mount and say so.
                log.error("restore: %s: %s", what, exc)
                continue
            restored += 1
        log.info("restore: %d layer(s) restored (%d materialised)", restored, len(self._local))
        return restored

    # -- fetching and the hot path ------------------------------------------------------------

    async def _layer_task(self, ident: str) -> None:
        """Startup set, background fetch, materialisation: one layer, once."""
        view = self._views.get(ident)
        if view is None or ident not in self._records:
            return  # released before the task started
        fetcher = view.fetcher
        with trio.CancelScope() as scope:
            self._scopes[ident] = scope
            try:
                paths = startup_paths(prefetch_set(view.layer), self._profiles.get(ident, ()))
                await fetch_startup(fetcher, paths)
                self._startup[ident].set()
                if self.options.background:
                    self._fetching.add(ident)
                    await fetch_background(fetcher, self._bg_limiter, self._bucket, paths)
                if await fetcher.refresh_cached() == 0:
                    await self._materialize(ident, view)
            except (ContentError, OSError) as exc:
                log.warning("%s: fetching stopped, the layer stays lazy: %s", fetcher.what, exc)
            finally:
                self._fetching.discard(ident)
                self._startup[ident].set()
                if self._scopes.get(ident) is scope:
                    del self._scopes[ident]

    async def make_local(self, layer_id_or_digest: str) -> Path:
        """Fetch the rest of a layer now (background priority) and materialise it; returns
        its directory. For ``[fetch] background = false`` setups and tests."""
        ident = self._ident(layer_id_or_digest)
        if ident in self._local:
            return self._local[ident]
        view = self._views.get(ident)
        if view is None or ident not in self._records:
            raise NotFound(f"layer {layer_id_or_digest}: not a mounted lazy layer")
        await fetch_background(view.fetcher, self._bg_limiter, self._bucket)
        missing = await view.fetcher.refresh_cached()
        if missing:
            raise Unavailable(f"{view.fetcher.what}: {missing} chunk(s) still missing")
        await self._materialize(ident, view)
        if ident not in self._local:
            raise Unavailable(f"{view.fetcher.what}: materialisation did not complete")
        return self._local[ident]

    async def _materialize(self, ident: str, view: LazyLayerView) -> None:
        rec = self._records[ident]
        dest = self.layers_dir / ident
        try:
            await trio.to_thread.run_sync(
                partial(materialize_layer, view.layer, self.cache, dest,
                        userxattr=self._userxattr, stop=self.stop),
                limiter=MATERIALIZE_LIMITER)
        except Cancelled:
            return
        if self._records.get(ident) is not rec:  # released meanwhile
            await trio.to_thread.run_sync(remove_dir, dest)
            return
        total = view.fetcher.total_bytes
        self.db.set_local(LocalRecord(rec.digest, ident, total))
        self._local[ident] = dest
        self._totals[ident] = total
        self._unused_fuse.setdefault(ident, trio.current_time())
        log.info("%s: materialised at %s (%d bytes); new mounts use it, no FUSE",
                 view.fetcher.what, dest, total)
        await self.sweep()

    async def sweep(self, *, grace: float | None = None) -> None:
        """Drop FUSE directories of materialised layers, and delete directories of released
        layers, that no mount (in any mount namespace) uses any more.

        A Mounts answer given just before a layer was materialised still names its FUSE
        directory, and its caller mounts a moment later: a materialised layer's FUSE
        directory stays at least ``grace`` seconds (``release_interval``) after the switch.
        """
        grace = self.options.release_interval if grace is None else grace
        async with self._sweep_lock:
            now = trio.current_time()
            for ident, since in sorted(self._unused_fuse.items()):
                if now - since < grace:
                    continue
                fuse_dir = self.fs.mountpoint / ident
                if ident in self._views and await trio.to_thread.run_sync(
                        dir_in_use, fuse_dir, ident):
                    continue
                del self._unused_fuse[ident]
                view = self._views.pop(ident, None)
                if view is not None and ident in self.fs.layer_ids():
                    await self.fs.remove_layer(ident)
                    log.info("layer %s: FUSE directory released", ident[:12])
            for ident, path in sorted(self._doomed.items()):
                if await trio.to_thread.run_sync(dir_in_use, path):
                    continue
                del self._doomed[ident]
                await trio.to_thread.run_sync(remove_dir, path)
                log.info("layer %s: materialised directory deleted", ident[:12])

    async def serve_sweeps(self, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``release_interval`` seconds while something waits for its users."""
        task_status.started()
        while True:
            await trio.sleep(self.options.release_interval)
            if self._unused_fuse or self._doomed:
                try:
                    await self.sweep()
                except OSError as exc:
                    log.warning("sweep of unused layer directories failed: %s", exc)

    # -- the mount ----------------------------------------------------------------------------

    async def _ensure_mounted(self) -> bool:
        """Serve the FUSE mount if it is not served yet; False if this process cannot."""
        if self._nursery is None:
            return True
        async with self._mount_lock:
            if self._mounted or self._mount_failed:
                return self._mounted
            mountpoint = self.fs.mountpoint
            if await trio.to_thread.run_sync(_served_elsewhere, mountpoint,
                                             abandon_on_cancel=True):
                log.warning("lazy layers: %s is served by another process; pulling natively "
                            "here", mountpoint)
                self._mount_failed = True
                return False
            try:
                await self._nursery.start(serve_fuse, self.fs, mountpoint)
            except (Unavailable, FailedPrecondition, OSError) as exc:
                log.warning("lazy layers: cannot serve %s (%s); pulling natively", mountpoint,
                            exc)
                self._mount_failed = True
                return False
            self._mounted = True
            return True

    async def _add(self, rec: LayerRecord, layer: LazyLayer) -> Path:
        ident = layer_id(rec.digest)
        self._records[ident] = rec
        view = self._views.get(ident)
        if view is not None:
            # Released, but a mount still held its FUSE directory: it serves again.
            self._unused_fuse.pop(ident, None)
        else:
            fetcher = LayerFetcher(self.source, parse_reference(rec.ref), rec.digest, layer,
                                   self.cache, limiter=self._limiter)
            view = LazyLayerView(ident, layer, fetcher, userxattr=self._userxattr)
            self.fs.add_layer(view)
            self._views[ident] = view
        path = self.fs.mountpoint / ident
        # What earlier runs (or other layers sharing chunks) left in the cache counts as
        # local from the start: status reports it, and the fetches skip it.
        await view.fetcher.refresh_cached()
        self._stats[ident] = view.fetcher.stats
        self._totals[ident] = view.fetcher.total_bytes
        self._startup[ident] = trio.Event()
        if self._mounted:
            # From a thread: the lookup it causes is answered by this loop.
            await trio.to_thread.run_sync(os.stat, path)
        if self._nursery is not None:
            self._nursery.start_soon(self._layer_task, ident)
        else:
            self._startup[ident].set()
        return path


def _served_elsewhere(mountpoint: Path) -> bool:
    """Whether a live FUSE server (another process) answers at ``mountpoint``. statfs always
    reaches the server; a stat may be answered from the kernel's attribute cache even after
    the server died, so a stale mount must not pass for a live one."""
    if not os.path.ismount(mountpoint):
        return False
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False  # stale (ENOTCONN): serve_fuse clears it
    return True


__all__ = ["LayerSource", "LayerStatus", "LazyLayers", "layer_id", "layer_source"]
