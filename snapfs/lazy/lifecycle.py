"""A lazy layer's life after it is mounted: startup set, background fetch, materialisation,
and the sweep that drops directories nothing mounts any more.

Per mounted layer, :meth:`Lifecycle.layer_task` runs once in the layer registry's nursery:
the startup set (``snapfs.lazy.schedule``), then (``[fetch] background``) every other chunk,
then, once every chunk is local, materialisation into ``<root>/layers/<id>`` (the hot path):
later mounts use that directory, and the FUSE directory goes once no mount uses it.
:meth:`Lifecycle.sweep` decides that from every mount namespace's table
(``snapfs.lazy.in_use``). State changes go through the one :class:`LayerTable`.

Must not index layers or talk to the snapshotter: ``snapfs.lazy.layers`` does; this module
only moves a known layer along ``lazy → fetching → local`` and cleans up after ``released``.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.errors import ContentError, NotFound, Unavailable
from content.lazyformat import prefetch_set
from snapfs.fuse import LayerFS
from snapfs.lazy.fetcher import MAX_SPAN
from snapfs.lazy.in_use import dir_in_use
from snapfs.lazy.layerdb import LayerDB, LocalRecord
from snapfs.lazy.materialize import Cancelled, materialize_layer, remove_dir
from snapfs.lazy.schedule import (
    FetchOptions,
    TokenBucket,
    fetch_background,
    fetch_startup,
    startup_paths,
)
from snapfs.lazy.state import LayerState, LayerTable

log = logging.getLogger(__name__)


class Lifecycle:
    """Moves the layers of one :class:`LayerTable` from lazy to local, and sweeps."""

    def __init__(self, table: LayerTable, fs: LayerFS, db: LayerDB, cache: ChunkCache, *,
                 options: FetchOptions, layers_dir: Path, userxattr: bool) -> None:
        self.table = table
        self.fs = fs
        self.db = db
        self.cache = cache
        self.options = options
        self.layers_dir = layers_dir
        self._userxattr = userxattr
        self._bg_limiter = trio.CapacityLimiter(options.background_concurrency)
        self._bucket = TokenBucket(options.background_rate, burst=max(
            options.background_rate, MAX_SPAN))
        # Materialising is disk-bound (writing a whole layer): one at a time leaves the disk
        # to reads. Per registry, not per import: each process (or test) gets its own.
        self._materialize_limiter = trio.CapacityLimiter(1)
        self._sweep_lock = trio.Lock()
        self.stop = threading.Event()  # set at shutdown: a materialising thread gives up

    async def layer_task(self, ident: str) -> None:
        """Startup set, background fetch, materialisation: one layer, once."""
        row = self.table.live(ident)
        if row is None or row.view is None:
            return  # released before the task started
        view = row.view
        fetcher = view.fetcher
        with trio.CancelScope() as scope:
            self.table.update(ident, scope=scope)
            try:
                paths = startup_paths(prefetch_set(view.layer), row.profile)
                await fetch_startup(fetcher, paths)
                row.startup.set()
                if self.options.background:
                    self.table.update(ident, fetching=True)
                    await fetch_background(fetcher, self._bg_limiter, self._bucket, paths)
                if await fetcher.refresh_cached() == 0:
                    await self.materialize(ident)
            except (ContentError, OSError) as exc:
                log.warning("%s: fetching stopped, the layer stays lazy: %s", fetcher.what, exc)
            finally:
                row.startup.set()
                current = self.table.live(ident)
                if current is not None and current.startup is row.startup:
                    self.table.update(ident, fetching=False,
                                      scope=None if current.scope is scope else current.scope)

    async def make_local(self, ident: str, what: str) -> Path:
        """Fetch the rest of a layer now (background priority) and materialise it; returns
        its directory. For ``[fetch] background = false`` setups and tests."""
        row = self.table.live(ident)
        if row is not None and row.local_dir is not None:
            return row.local_dir
        if row is None or row.view is None:
            raise NotFound(f"layer {what}: not a mounted lazy layer")
        fetcher = row.view.fetcher
        await fetch_background(fetcher, self._bg_limiter, self._bucket)
        missing = await fetcher.refresh_cached()
        if missing:
            raise Unavailable(f"{fetcher.what}: {missing} chunk(s) still missing")
        await self.materialize(ident)
        row = self.table.live(ident)
        if row is None or row.local_dir is None:
            raise Unavailable(f"{fetcher.what}: materialisation did not complete")
        return row.local_dir

    async def materialize(self, ident: str) -> None:
        row = self.table.live(ident)
        if row is None or row.view is None or row.record is None:
            return
        view, rec = row.view, row.record
        dest = self.layers_dir / ident
        try:
            await trio.to_thread.run_sync(
                partial(materialize_layer, view.layer, self.cache, dest,
                        userxattr=self._userxattr, stop=self.stop),
                limiter=self._materialize_limiter)
        except Cancelled:
            return
        current = self.table.live(ident)
        if current is None or current.record is not rec:  # released meanwhile
            await trio.to_thread.run_sync(remove_dir, dest)
            return
        total = view.fetcher.total_bytes
        self.db.set_local(LocalRecord(rec.digest, ident, total))
        since = current.fuse_unused_since
        self.table.update(ident, local_dir=dest, total_bytes=total,
                          fuse_unused_since=trio.current_time() if since is None else since)
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
            for row in list(self.table):
                await self._sweep_one(row, now, grace)
                self.table.drop_if_done(row.ident)

    async def _sweep_one(self, row: LayerState, now: float, grace: float) -> None:
        ident = row.ident
        since = row.fuse_unused_since
        if since is not None and now - since >= grace:
            fuse_dir = self.fs.mountpoint / ident
            if row.view is None or not await trio.to_thread.run_sync(
                    dir_in_use, fuse_dir, ident):
                row = self.table.update(ident, fuse_unused_since=None, view=None)
                if ident in self.fs.layer_ids():
                    await self.fs.remove_layer(ident)
                    log.info("layer %s: FUSE directory released", ident[:12])
        doomed = row.doomed_dir
        if doomed is not None and not await trio.to_thread.run_sync(dir_in_use, doomed):
            self.table.update(ident, doomed_dir=None)
            await trio.to_thread.run_sync(remove_dir, doomed)
            log.info("layer %s: materialised directory deleted", ident[:12])

    def has_leftovers(self) -> bool:
        return any(row.has_leftovers for row in self.table)

    async def serve_sweeps(self, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``release_interval`` seconds while something waits for its users."""
        task_status.started()
        while True:
            await trio.sleep(self.options.release_interval)
            if self.has_leftovers():
                try:
                    await self.sweep()
                except OSError as exc:
                    log.warning("sweep of unused layer directories failed: %s", exc)


__all__ = ["Lifecycle"]
