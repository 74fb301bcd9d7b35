"""A lazy layer's life after it is mounted: startup set, background fetch, materialisation,
and the sweep that drops directories nothing mounts any more.

Per mounted layer, :meth:`Lifecycle.layer_task` runs once in the layer registry's nursery:
the startup set (``snapfs.lazy.schedule``), then (``[fetch] background``, on by default) the
whole blob at background priority, verified against the layer digest and the diffID and
materialised into ``<root>/layers/<id>`` (``snapfs.lazy.complete``: the hot path). Later
mounts use that directory; mounts made before read it through FUSE; the layer's chunks leave
the cache; the FUSE directory goes once no mount uses it. A digest mismatch takes the layer
out of service (``broken``).
:meth:`Lifecycle.sweep` decides that from every mount namespace's table
(``snapfs.lazy.in_use``). State changes go through the one :class:`LayerTable`.

Must not index layers or talk to the snapshotter: ``snapfs.lazy.layers`` does; this module
only moves a known layer along ``lazy → fetching → local`` and cleans up after ``released``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.digest import Digest
from content.errors import ContentError, DigestMismatch, NotFound, Unavailable
from content.lazyformat import prefetch_set
from snapfs.lazy import counters, reclaim
from snapfs.lazy.complete import BlobReader, Cancelled, complete_layer, remove_dir
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.in_use import dir_in_use
from snapfs.lazy.layerdb import LayerDB, LocalRecord, layer_id
from snapfs.lazy.mount import InlineMount, LayerMount
from snapfs.lazy.readahead import read_ahead
from snapfs.lazy.reclaim import Reclaimed
from snapfs.lazy.schedule import FetchOptions, fetch_startup, startup_paths
from snapfs.lazy.scheduler import PIECE, FetchScheduler
from snapfs.lazy.state import LayerState, LayerTable
from snapfs.lazy.trust import ManifestTrust
from snapfs.lazy.usage import layer_usage
from snapfs.lazy.view import LazyLayerView

log = logging.getLogger(__name__)

# Seconds before each new try of a background completion that failed on something transient
# (the registry down, a reset past the client's retries); the last delay repeats for as long
# as the layer is mounted. A digest mismatch is never retried: it takes the layer out.
COMPLETE_RETRY_DELAYS = (2.0, 10.0, 60.0, 300.0)


class Lifecycle:
    """Moves the layers of one :class:`LayerTable` from lazy to local, and sweeps."""

    def __init__(self, table: LayerTable, mount: LayerMount, db: LayerDB, cache: ChunkCache, *,
                 options: FetchOptions, layers_dir: Path, userxattr: bool,
                 scheduler: FetchScheduler, trust: ManifestTrust) -> None:
        self.table = table
        self.mount = mount
        self.db = db
        self.cache = cache
        self.options = options
        self.layers_dir = layers_dir
        self._userxattr = userxattr
        self._scheduler = scheduler
        self._trust = trust
        # Completing is disk-bound (writing a whole layer): one at a time leaves the disk to
        # reads. Per registry, not per import: each process (or test) gets its own.
        self._complete_limiter = trio.CapacityLimiter(1)
        self._sweep_lock = trio.Lock()
        self.stop = threading.Event()  # set at shutdown: a completing thread gives up
        self.gc_runs = 0  # collections of unneeded chunks and directories (metrics)
        self.gc_freed_bytes = 0
        self._evictions_saved: dict[str, int] = {}
        self._evictions_elsewhere: dict[str, int] = {}  # a FUSE server's, told since start
        self._usage_saved: dict[str, dict[str, int]] = {}  # what flush_counts last wrote

    async def layer_task(self, ident: str) -> None:
        """Startup set, then (``[fetch] background``) the whole layer, verified and
        materialised: one layer, once."""
        row = self.table.live(ident)
        if row is None or row.view is None:
            return  # released before the task started
        view = row.view
        fetcher = view.fetcher
        with trio.CancelScope() as scope:
            self.table.update(ident, scope=scope)
            try:
                spool = self._scheduler.spool
                if self.options.background and spool is not None:  # each byte crosses once
                    await trio.to_thread.run_sync(spool.open, fetcher.blob)
                # What earlier runs (or other layers sharing chunks) left in the cache counts
                # as local: status reports it, and the fetches skip it. Here, not in the
                # Prepare: a stat per chunk (~0.1 s for 8000 files) a pull need not wait for.
                await fetcher.refresh_cached()
                paths = startup_paths(prefetch_set(view.layer), row.profile)
                await fetch_startup(fetcher, paths)
                row.startup.set()
                if self.options.background:
                    await self._complete_retrying(ident)
            except (ContentError, OSError) as exc:
                log.warning("%s: fetching stopped, the layer stays lazy: %s", fetcher.what, exc)
            finally:
                if self._scheduler.spool is not None:
                    self._scheduler.spool.close(fetcher.blob)
                row.startup.set()
                current = self.table.live(ident)
                if current is not None and current.startup is row.startup:
                    self.table.update(ident, fetching=False,
                                      scope=None if current.scope is scope else current.scope)

    async def _complete_retrying(self, ident: str) -> None:
        """:meth:`complete`, tried again after a transient failure while the layer is
        mounted and in service: one bad minute of the registry must not leave a layer lazy
        (and its reads on the network) for the life of the daemon."""
        for attempt in itertools.count():
            try:
                await self.complete(ident)
                return
            except DigestMismatch:
                raise
            except (ContentError, OSError) as exc:
                row = self.table.live(ident)
                if row is None or row.view is None or row.broken is not None:
                    raise
                delay = COMPLETE_RETRY_DELAYS[min(attempt, len(COMPLETE_RETRY_DELAYS) - 1)]
                log.warning("%s: background fetch failed (%s); trying again in %.0f s",
                            row.view.fetcher.what, exc, delay)
                await trio.sleep(delay)

    async def make_local(self, ident: str, what: str) -> Path:
        """Complete a layer now (background priority); returns its directory."""
        row = self.table.live(ident)
        if row is not None and row.local_dir is not None:
            return row.local_dir
        if row is None or row.view is None:
            raise NotFound(f"layer {what}: not a mounted lazy layer")
        await self.complete(ident)
        row = self.table.live(ident)
        if row is None or row.local_dir is None:
            raise Unavailable(f"layer {what}: completion did not finish")
        return row.local_dir

    async def complete(self, ident: str) -> None:
        """Fetch the whole blob, verify its digest and diffID, materialise it; a mismatch
        takes the layer out of service. Other errors leave it lazy (the next try may work)."""
        row = self.table.live(ident)
        if row is None or row.view is None or row.record is None or row.local_dir is not None:
            return
        if row.broken is not None:
            raise Unavailable(f"{row.view.fetcher.what}: out of service: {row.broken}")
        view, rec = row.view, row.record
        fetcher = view.fetcher
        diff_id = await self._trust.diff_id(fetcher.ref, rec.digest, row.labels, fetcher.what)
        self.table.update(ident, fetching=True)
        dest = self.layers_dir / ident
        spool = self._scheduler.spool
        try:
            try:
                done = await self._materialise(fetcher, rec.size, dest, diff_id)
            except DigestMismatch as exc:
                if spool is None or not spool.holds(rec.digest):
                    raise
                # A spooled range a reader fetched may be the bad one: once more, all of
                # it from the registry, before the layer is taken out of service.
                log.warning("%s: %s; fetching the whole blob again", fetcher.what, exc)
                spool.close(rec.digest)
                done = await self._materialise(fetcher, rec.size, dest, diff_id)
            if not done:
                return
        except DigestMismatch as exc:
            await self._take_out_of_service(ident, str(exc))
            raise
        finally:
            current = self.table.live(ident)
            if current is not None:
                self.table.update(ident, fetching=False)
        current = self.table.live(ident)
        if current is None or current.record is not rec:  # released meanwhile
            await trio.to_thread.run_sync(remove_dir, dest)
            return
        total = fetcher.total_bytes
        self.db.set_local(LocalRecord(rec.digest, ident, total))
        view.local_dir = dest
        await self.mount.update_layer(view)  # before its chunks leave the cache
        if spool is not None:  # reads use the directory now
            spool.close(rec.digest)
        since = current.fuse_unused_since
        if since is None and not current.held:  # a held one keeps serving a recording
            since = trio.current_time()
        self.table.update(ident, local_dir=dest, total_bytes=total, fuse_unused_since=since)
        current.settled.set()
        log.info("%s: complete, blob and diffID %s verified, materialised at %s (%d bytes); "
                 "new mounts use it, no FUSE", fetcher.what, diff_id.short(), dest, total)
        await self._drop_chunks(ident, view)
        await self.sweep()

    async def _materialise(self, fetcher: LayerFetcher, size: int, dest: Path,
                           diff_id: Digest) -> bool:
        """Stream, verify, unpack the blob into ``dest`` (False: cancelled), read ahead."""
        async def piece(offset: int, length: int) -> bytes:
            return await self._scheduler.fetch(
                fetcher.ref, fetcher.blob, offset, length, "background",
                on_issue=lambda: fetcher.count("background", 1, 0),
                on_bytes=lambda n: fetcher.count("background", 0, n))

        def unpack(fetch: Callable[[int, int], bytes]) -> None:
            reader = BlobReader(fetch, size, fetcher.blob, fetcher.what, stop=self.stop)
            complete_layer(reader, dest, diff_id=diff_id, what=fetcher.what,
                           userxattr=self._userxattr)

        try:
            await read_ahead(piece, size, PIECE, self.options.background_concurrency + 1,
                             unpack, limiter=self._complete_limiter)
        except Cancelled:
            return False
        return True

    async def _take_out_of_service(self, ident: str, why: str) -> None:
        row = self.table.live(ident)
        if row is None or row.view is None:
            return
        row.view.broken = why
        await self.mount.update_layer(row.view)
        self.table.update(ident, broken=why)
        row.settled.set()
        log.error("%s: out of service, every read of it fails: %s", row.view.fetcher.what, why)

    async def _drop_chunks(self, ident: str, view: LazyLayerView) -> None:
        """A materialised layer is not stored twice: its chunks leave the cache, but for
        those another still-lazy layer shares."""
        needed = {c.digest for row in self.table.live_rows()
                  if row.ident != ident and row.local_dir is None and row.view is not None
                  for cs in row.view.layer.files.values() for c in cs}
        mine = {c.digest for cs in view.layer.files.values() for c in cs} - needed
        view.fetcher.retired = True
        removed = await trio.to_thread.run_sync(
            lambda: sum(1 for d in mine if self.cache.remove(d)))
        view.fetcher.forget_cached(mine)
        log.debug("%s: %d chunk(s) dropped from the cache", view.fetcher.what, removed)

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
            fuse_dir = self.mount.path_of(ident)
            if row.view is None or not await trio.to_thread.run_sync(
                    dir_in_use, fuse_dir, ident):
                row = self.table.update(ident, fuse_unused_since=None, view=None)
                if ident in self.mount.layer_ids():
                    await self.mount.remove_layer(ident)
                    log.info("layer %s: FUSE directory released", ident[:12])
        doomed = row.doomed_dir
        if doomed is not None and not await trio.to_thread.run_sync(dir_in_use, doomed):
            self.table.update(ident, doomed_dir=None)
            await trio.to_thread.run_sync(remove_dir, doomed)
            log.info("layer %s: materialised directory deleted", ident[:12])

    # -- giving disk back (snapfs.lazy.reclaim) and persisted counters (snapfs.lazy.counters)

    async def collect(self) -> Reclaimed:
        """Delete the chunks no lazy layer needs and layer directories no record names."""
        await self.sweep()
        async with self._sweep_lock:
            self.forget_evicted()
            records = await trio.to_thread.run_sync(self.db.all)
            needed = reclaim.needed_chunks(self.table)
            for rec in records:
                row = self.table.live(layer_id(rec.digest))
                if row is None or row.view is None:
                    # Recorded but not served here (another process serves the mount, e.g.
                    # a detached `snapfs run`): its index, from its record, says what it has.
                    needed.update((await layer_usage(self.db, self.cache, self.layers_dir,
                                                     rec)).chunks)
            chunks, chunk_bytes = await trio.to_thread.run_sync(
                reclaim.remove_chunks, self.cache, needed)
            local = [d for d in await trio.to_thread.run_sync(
                lambda: [self.db.local(r.digest) for r in records]) if d is not None]
            present = await trio.to_thread.run_sync(reclaim.list_names, self.layers_dir)
            stray = reclaim.stray_names(present, [r.digest.hex for r in records],
                                        [d.dir for d in local], self.table)
            dirs, dir_bytes = await trio.to_thread.run_sync(
                reclaim.remove_stray, self.layers_dir, stray)
        done = Reclaimed(chunks, chunk_bytes, dirs, dir_bytes)
        self.gc_runs += 1
        self.gc_freed_bytes += done.bytes
        if chunks or dirs:
            log.info("gc: %d chunk(s) (%d bytes) and %d layer dir(s) (%d bytes) removed",
                     chunks, chunk_bytes, dirs, dir_bytes)
        return done

    def forget_evicted(self) -> None:
        """Chunks the cache evicted are no longer local: tell the fetchers."""
        evicted = set(self.cache.drain_evicted())
        if evicted:
            for row in self.table:
                if row.view is not None:
                    row.view.fetcher.forget_cached(evicted)

    async def refresh_from_mount(self) -> None:
        """Learn what the process serving the mount counted and cached: with a FUSE server,
        reads run there, so its evictions, the chunks its reads cached and the last read that
        failed (named in ``snapfs status``) are news here."""
        await self.mount.refresh()
        if isinstance(self.mount, InlineMount):
            return
        for name, n in self.mount.take_evictions().items():
            self._evictions_elsewhere[name] = self._evictions_elsewhere.get(name, 0) + n
        for ident, (chunks, hits) in self.mount.take_window_counts().items():
            row = self.table.live(ident)
            if row is not None:  # its reads' windows ran there: count them here
                row.stats.window_chunks += chunks
                row.stats.window_hits += hits
        for row in list(self.table.live_rows()):
            if row.view is not None and row.local_dir is None:
                await row.view.fetcher.refresh_cached()
            if row.view is not None:
                row.view.last_error = self.mount.last_error(row.ident) or row.view.last_error

    async def flush_counts(self) -> None:
        """Persist what was counted since the last flush (fetch stats, cache evictions)."""
        deltas: dict[str, dict[str, int]] = {}
        saved: dict[str, dict[str, int]] = {}
        for row in self.table.live_rows():
            assert row.record is not None
            now = counters.as_counts(row.stats)
            change = counters.delta(now, row.saved)
            if change:
                deltas[counters.stats_key(row.record.digest)] = change
                saved[row.ident] = now
        await self.refresh_from_mount()
        evictions = counters.eviction_counts(self.cache.evictions())
        for name, n in self._evictions_elsewhere.items():
            evictions[name] = evictions.get(name, 0) + n
        change = counters.delta(evictions, self._evictions_saved)
        if change:
            deltas[counters.CACHE_KEY] = change
        self.forget_evicted()
        usage = {}
        for row in self.table.live_rows():
            assert row.record is not None
            local = row.total_bytes if row.view is None or row.local_dir is not None \
                else row.view.fetcher.local_bytes()
            now_usage = {"total_bytes": row.total_bytes, "local_bytes": local}
            if now_usage != self._usage_saved.get(row.ident):
                usage[row.ident] = now_usage
        if usage:
            values = {counters.usage_key(r.record.digest): usage[r.ident]
                      for r in self.table.live_rows() if r.ident in usage and r.record}
            await trio.to_thread.run_sync(self.db.set_counts, values)
            self._usage_saved.update(usage)
        if not deltas:
            return
        await trio.to_thread.run_sync(self.db.add_counts, deltas)
        self._evictions_saved = evictions
        for ident, now in saved.items():
            if self.table.live(ident) is not None:
                self.table.update(ident, saved=now)

    def has_leftovers(self) -> bool:
        return any(row.has_leftovers for row in self.table)

    async def serve_sweeps(self, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``release_interval`` seconds while something waits for its users."""
        task_status.started()
        while True:
            await trio.sleep(self.options.release_interval)
            try:
                await self.flush_counts()
            except (ContentError, OSError) as exc:
                log.warning("persisting fetch counters failed: %s", exc)
            if self.has_leftovers():
                try:
                    await self.sweep()
                except OSError as exc:
                    log.warning("sweep of unused layer directories failed: %s", exc)


__all__ = ["Lifecycle"]
