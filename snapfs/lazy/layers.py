"""Remote (lazy) layers: the snapshotter's ``RemoteLayers`` seam, backed by FUSE.

A Prepare carrying ``containerd.io/snapshot.ref`` reaches :meth:`LazyLayers.prepare_remote`:

1. the image reference and layer digest come from the labels — containerd's CRI set
   (``cri.image-ref``, ``cri.layer-digest``) or stargz's (``remote/stargz.reference``,
   ``remote/stargz.digest``); without them the layer is native (None);
2. ``snapfs.lazy.indexer`` reads its size, the TOC digest its manifest vouches for, its
   footer and TOC (verified); it answers None for a layer to unpack natively and raises
   Unavailable (registry silent) or InvalidArgument (a TOC that is malformed or does not
   verify: falling back to native would hide a broken image behind a slow pull);
3. the layer's :class:`LazyLayerView` is added to the one FUSE mount at ``<root>/fuse``, and
   a :class:`RemoteLayer` returned: its directory, and ``record``, which writes the layer's
   record (with the ranges its index came from) inside the snapshotter's transaction.

Once mounted, each layer's startup set is fetched, then (``[fetch] background``, on by
default) the whole blob, verified and materialised (``snapfs.lazy.lifecycle``). Snapshot
records keep naming the layer's FUSE directory; the snapshotter resolves it through
:meth:`lowerdir`, so every later mount uses the materialised directory: an image whose layers
are all local mounts as a plain kernel overlay. Mounts made before keep their FUSE lowerdir
(served from the materialised directory), and the FUSE directory is dropped only when no
mount in any mount namespace uses it (:meth:`sweep`). When containerd's GC removes the last
snapshot of a layer, :meth:`forget_remote` drops its record in that transaction and
:meth:`release_remote` forgets the rest.

Each layer is one frozen :class:`~snapfs.lazy.state.LayerState` in one table. Layers reach
the FUSE mount through ``snapfs.lazy.mount.LayerMount``: served by this process (started on
first need by ``snapfs.fuse.supervisor``) or by a long-lived ``snapfs fuse-server`` that
outlives daemon restarts (``snapfs.lazy.fuse_client``); putting one there, all or nothing,
is ``snapfs.lazy.attach``. :meth:`lowerdir` also follows a layer another process sharing
the server materialised.

At startup (``snapfs.lazy.open.open_lazy_layers``) recorded layers come back
(``snapfs.lazy.restore``): materialised ones from their directories, every other one
re-indexed from its recorded ranges (no network) and added to the mount before anything is
served, so committed lazy snapshots' lowerdirs exist again after a restart or a crash.

Nothing on the trio loop that serves FUSE may touch the mount with blocking I/O: the loop
would wait for a reply only it can send. A new layer directory is stat'ed once from a worker
thread, which leaves its entry in the kernel's cache (entries live 24 h) for code that does.

Must not fetch past indexing, materialise or sweep itself (``snapfs.lazy.lifecycle``), nor
decide snapshot semantics (the snapshotter's).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.digest import Digest, parse_digest
from content.errors import ContentError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from content.lazyformat import LazyLayer, prefetch_set
from snapfs.fuse import LayerFS, LayerStats
from snapfs.fuse.supervisor import FuseSupervisor
from snapfs.fuse.view import Node
from snapfs.lazy.attach import Attacher
from snapfs.lazy.fetcher import FetchStats, LayerFetcher
from snapfs.lazy.indexer import Indexer, reload_layer
from snapfs.lazy.layerdb import LayerDB, LayerRecord
from snapfs.lazy.layergc import LayerGC
from snapfs.lazy.lifecycle import Lifecycle
from snapfs.lazy.mount import InlineMount, LayerMount
from snapfs.lazy.prepare import index_and_serve
from snapfs.lazy.restore import lose_layers, move_layers, restore_layers
from snapfs.lazy.schedule import FetchOptions, fetch_startup
from snapfs.lazy.scheduler import FetchScheduler
from snapfs.lazy.source import LayerSource, layer_id, layer_source
from snapfs.lazy.spool import BlobSpool
from snapfs.lazy.state import LayerStatus, LayerTable, layer_status
from snapfs.lazy.trust import ManifestTrust, TocPolicy
from snapfs.lazy.view import LazyLayerView
from snapfs.snapshot.metastore import Transaction
from snapfs.snapshot.remote import RemoteLayer

log = logging.getLogger(__name__)

TAIL_SIZE = 64 * 1024  # the first read: footer, and the TOC of a small layer with it


class LazyLayers:
    """``snapfs.snapshot.remote.ManagedRemoteLayers`` over one :class:`LayerFS`.

    The FUSE mount is started in ``nursery`` when the first lazy layer needs it (so a root
    with no lazy layers has no mount); with ``nursery=None`` layers are only added to ``fs``
    and no fetch is scheduled (unit tests). A process that cannot serve the mount pulls
    natively. Each mounted layer gets one task in ``nursery`` (``Lifecycle.layer_task``).
    """

    def __init__(self, source: LayerSource, fs: LayerFS, db: LayerDB, cache: ChunkCache, *,
                 nursery: trio.Nursery | None = None, options: FetchOptions | None = None,
                 timeout: float | None = None, tail_size: int = TAIL_SIZE,
                 concurrency: int | None = None, userxattr: bool = False,
                 layers_dir: Path | None = None, toc_policy: TocPolicy = "require",
                 mount: LayerMount | None = None) -> None:
        options = options or FetchOptions()
        self.source = source
        self.fs = fs
        self.db = db
        self.cache = cache
        self.options = options
        self.layers_dir = layers_dir or fs.mountpoint.parent / "layers"
        # Served here (``fs``), or by a ``snapfs fuse-server`` that outlives this process.
        self.mount: LayerMount = mount or InlineMount(
            fs, FuseSupervisor(fs, nursery, required=options.lazy_required))
        # Layers whose FUSE server died with them lazy: their snapshots answer Unavailable
        # until they are removed (containerd's "layer broken"). By layer id.
        self.lost: dict[str, LayerRecord] = {}
        self.table = LayerTable()
        # One scheduler per process: demand > startup > background, one bandwidth budget.
        self.scheduler = FetchScheduler(
            source, concurrency=concurrency or options.concurrency,
            background_concurrency=options.background_concurrency,
            background_rate=options.background_rate, background_pause=options.background_pause,
            background_hold=options.background_hold, spool=BlobSpool(self.layers_dir))
        self._trust = ManifestTrust(source)
        self.lifecycle = Lifecycle(self.table, self.mount, db, cache, options=options,
                                   layers_dir=self.layers_dir, userxattr=userxattr,
                                   scheduler=self.scheduler, trust=self._trust)
        self.stop = self.lifecycle.stop  # set at shutdown: a materialising thread gives up
        self.gc = LayerGC(self.table, fs, db, self.lifecycle)  # the snapshotter's Cleanup
        self._nursery = nursery
        self._timeout = timeout if timeout is not None else options.prepare_timeout
        self._tail_size = tail_size
        self._indexer = Indexer(source, self._trust, timeout=self._timeout,
                                tail_size=tail_size, toc_policy=toc_policy)
        self._userxattr = userxattr
        self._locks: dict[Digest, trio.Lock] = {}
        self._attacher = Attacher(source, cache, self.scheduler, options, self.mount,
                                  self.table, db, userxattr)
        self.hooks = self._attacher.hooks  # startup profiles start their work early

    # -- inspection ---------------------------------------------------------------------------

    def views(self) -> dict[str, LazyLayerView]:
        return {r.ident: r.view for r in self.table if r.view is not None}

    def stats(self) -> dict[str, FetchStats]:
        """Fetch counters per known layer id."""
        return {r.ident: r.stats for r in self.table.live_rows()}

    def fetcher(self, digest: Digest) -> LayerFetcher:
        row = self.table.get(layer_id(digest))
        if row is None or row.view is None:
            raise NotFound(f"layer {digest}: not a mounted lazy layer")
        return row.view.fetcher

    def layer_root(self, ident: str) -> Node:
        row = self.table.get(ident)
        if row is None or row.view is None:
            raise NotFound(f"layer {ident}: not mounted")
        return row.view.root()

    def fuse_stats(self, ident: str) -> LayerStats:
        """The layer's FUSE counters, wherever the mount is served (NotFound if absent)."""
        return self.mount.stats(ident)

    async def refresh_fuse_stats(self) -> None:
        await self.lifecycle.refresh_from_mount()

    def layer_status(self) -> list[LayerStatus]:
        self.lifecycle.forget_evicted()  # evicted chunks are not local any more
        return layer_status(self.table, self.mount.path_of)

    def is_local(self, layer_id_or_digest: str) -> bool:
        row = self.table.live(self._ident(layer_id_or_digest))
        return row is not None and row.local_dir is not None

    async def wait_startup(self, layer_id_or_digest: str) -> None:
        """Until the layer's startup set is local (or its fetch gave up)."""
        row = self.table.get(self._ident(layer_id_or_digest))
        if row is not None:
            await row.startup.wait()

    def _ident(self, key: str) -> str:
        if ":" in key:
            with contextlib.suppress(InvalidArgument):
                return layer_id(parse_digest(key))
        return key

    # -- the RemoteLayers seam ----------------------------------------------------------------

    def lowerdir(self, lower: str) -> str:
        """Where a committed lazy snapshot's files are now: the materialised directory once
        its layer is local, else the layer's FUSE directory where it is served now (``lower``,
        or under a fresh FUSE server's mountpoint after an upgrade drained the old one)."""
        path = Path(lower)
        if path.parent != self.mount.mountpoint:
            return lower
        if path.name in self.lost:
            raise Unavailable(f"layer {path.name[:12]}: its FUSE server died while it was "
                              "lazy (layer broken); remove its images and pull again")
        served = str(self.mount.path_of(path.name))
        row = self.table.live(path.name)
        if row is not None and row.held and row.view is not None:
            return served
        if row is not None and row.local_dir is None:
            # Another process sharing the FUSE server (a daemon-less command) may have
            # materialised it, and may drop its FUSE directory once unused: use its
            # directory (renamed into place only complete and verified).
            done = self.layers_dir / path.name
            return str(done) if done.is_dir() else served
        return served if row is None else str(row.local_dir)

    async def hold_fuse(self, idents: Sequence[str]) -> None:
        """Serve these layers through FUSE until :meth:`release_fuse`, materialised ones
        too (from their directory; a dropped FUSE directory is re-added from the record's
        index ranges, no network): a profile recording sees only what FUSE serves."""
        for ident in idents:
            row = self.table.live(ident)
            if row is None or row.record is None:
                continue
            if row.view is None and row.local_dir is not None:
                if not await self.mount.ensure_served():
                    raise Unavailable(f"{self.mount.mountpoint} cannot be served: layer "
                                      f"{ident[:12]} cannot be recorded")
                view = await self._mount_view(row.record, *await self._reload(row.record))
                view.fetcher.retired = True  # complete: nothing is fetched for it again
                view.local_dir = row.local_dir
                row = self.table.update(ident, view=view)
            self.table.update(ident, held=row.held + 1, fuse_unused_since=None)

    def release_fuse(self, idents: Sequence[str]) -> None:
        """Undo one :meth:`hold_fuse`: a materialised layer's FUSE directory is dropped
        again once no mount uses it (the sweep's grace period starts now)."""
        for ident in idents:
            row = self.table.get(ident)
            if row is None or not row.held:
                continue
            row = self.table.update(ident, held=row.held - 1)
            if not row.held and row.view is not None and (row.local_dir is not None
                                                         or row.released):
                self.table.update(ident, fuse_unused_since=trio.current_time())

    def set_startup_paths(self, layer_id_or_digest: str, paths: Sequence[str]) -> None:
        """A recorded profile's paths for a layer: its startup set when it has no landmark.
        A layer that is mounted and still lazy fetches them at once."""
        ident = self._ident(layer_id_or_digest)
        row = self.table.live(ident)
        if row is None:
            return
        row = self.table.update(ident, profile=tuple(paths))
        view = row.view
        if (view is not None and self._nursery is not None and row.local_dir is None
                and prefetch_set(view.layer) is None and paths):
            self._nursery.start_soon(self._prefetch_profile, view, list(paths))

    async def _prefetch_profile(self, view: LazyLayerView, paths: list[str]) -> None:
        try:
            await fetch_startup(view.fetcher, paths)
        except (ContentError, OSError) as exc:
            log.warning("%s: prefetching a profile's %d file(s) failed: %s",
                        view.fetcher.what, len(paths), exc)

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> RemoteLayer | None:
        source = layer_source(labels)
        if source is None:
            return None
        ref, digest = source
        ident = layer_id(digest)
        if self.hooks.preparing is not None:
            self.hooks.preparing(labels)
        lock = self._locks.setdefault(digest, trio.Lock())
        async with lock:
            if self.table.live(ident) is not None:
                log.info("snapshot %s: layer %s is already mounted lazily", key, digest.short())
                return RemoteLayer(str(self.mount.mountpoint / ident))
            what = f"layer {digest.short()} of {ref}"
            found, served = await index_and_serve(self._indexer, self.mount, key, ref,
                                                  digest, labels, what)
            if found is None or not served:
                return None
            layer, size, ranges = found
            rec = LayerRecord(digest, str(ref), size, layer.format, layer.toc_digest)
            path = await self._add(rec, layer, ranges, labels)
            log.info("snapshot %s: %s mounted lazily (%s, %d files) at %s", key, what,
                     layer.format, len(layer.files), path)

            def record(tx: Transaction) -> None:
                self.db.put(rec, ranges, txn=tx.txn)  # in the snapshot's transaction

            return RemoteLayer(str(path), record)

    def forget_remote(self, tx: Transaction, lower: str) -> None:
        """Inside the Remove transaction of the last snapshot on ``lower``: drop the layer's
        record (its ranges and local marker with it)."""
        path = Path(lower)
        row = self.table.live(path.name) if path.parent == self.mount.mountpoint else None
        if row is not None and row.record is not None:
            self.db.remove(row.record.digest, txn=tx.txn)
        elif path.parent == self.mount.mountpoint and path.name in self.lost:
            self.db.remove(self.lost[path.name].digest, txn=tx.txn)

    async def check_reuse(self, lower: str, labels: Mapping[str, str]) -> None:
        """Another Prepare names the chain ID a lazy snapshot on ``lower`` is committed under.
        The same layer blob: reuse. Another blob (an image claiming that layer's diffID): only
        once the committed layer's content is verified against the diffID, waiting for its
        background completion up to ``prepare_timeout``; never if it failed."""
        source = layer_source(labels)
        path = Path(lower)
        if source is None or path.parent != self.mount.mountpoint:
            return
        wanted, ident = source[1], path.name
        if layer_id(wanted) == ident:
            return
        row = self.table.live(ident)
        what = f"a lazy snapshot of layer {ident[:12]} claims the chain of layer {wanted}"
        if row is None or row.view is None:
            raise Unavailable(f"{what}, and that layer is not served here")
        with trio.move_on_after(self._timeout):
            await row.settled.wait()
        row = self.table.live(ident) or row
        if row.local_dir is not None:
            return  # its uncompressed stream matched the diffID: the same content
        if row.broken is not None:
            raise FailedPrecondition(f"{what}: it failed verification ({row.broken}); "
                                     "remove the image that brought it")
        raise Unavailable(f"{what}: not verified yet; retry once it is complete")

    async def release_remote(self, lower: str) -> None:
        """No snapshot uses the layer at ``lower`` any more (containerd's GC removed it): stop
        its fetches, forget it, and drop its FUSE directory and materialised directory once
        no mount uses them. Its chunks stay in the (shared) cache."""
        path = Path(lower)
        if path.parent != self.mount.mountpoint:
            return
        self.lost.pop(path.name, None)
        row = self.table.live(path.name)
        if row is None or row.record is None:
            return
        if row.scope is not None:
            row.scope.cancel()
        self.table.release(row.ident)
        log.info("layer %s released (no snapshot uses it)", row.record.digest.short())
        await self.lifecycle.collect()  # sweeps first; then its chunks go too

    async def restore(self) -> int:
        """Bring back every recorded layer (``snapfs.lazy.restore``); returns how many."""
        return await restore_layers(self.db, self.table, self.mount,
                                    layers_dir=self.layers_dir, lost=self.lost,
                                    reload=self._reload, add=self._add)

    def server_lost(self) -> None:
        """The FUSE server died: what it served lazily is lost (``snapfs.lazy.restore``)."""
        lose_layers(self.table, self.lost)

    def server_draining(self) -> None:
        """The FUSE server drains (an upgrade): its layers move to a fresh one, so that new
        mounts use it while running ones keep the old (``snapfs.lazy.restore``)."""
        if self._nursery is not None:
            self._nursery.start_soon(move_layers, self.table, self.db, self.mount)

    # -- fetching and the hot path (snapfs.lazy.lifecycle) -------------------------------------

    async def make_local(self, layer_id_or_digest: str) -> Path:
        """Fetch the rest of a layer now and materialise it; returns its directory."""
        return await self.lifecycle.make_local(self._ident(layer_id_or_digest),
                                               layer_id_or_digest)

    async def sweep(self, *, grace: float | None = None) -> None:
        await self.lifecycle.sweep(grace=grace)

    async def serve_sweeps(self, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.lifecycle.serve_sweeps(task_status=task_status)

    async def _reload(self, rec: LayerRecord) -> tuple[LazyLayer, Mapping[int, bytes]]:
        """A recorded layer's index, and the ranges its record kept it in (no network)."""
        ranges = await trio.to_thread.run_sync(self.db.ranges, rec.digest)
        return await reload_layer(rec, ranges, tail_size=self._tail_size), ranges

    async def _mount_view(self, rec: LayerRecord, layer: LazyLayer,
                          ranges: Mapping[int, bytes]) -> LazyLayerView:
        return await self._attacher.mount_view(rec, layer, ranges, nursery=self._nursery)

    async def _add(self, rec: LayerRecord, layer: LazyLayer, ranges: Mapping[int, bytes],
                   labels: Mapping[str, str] | None = None) -> Path:
        """Mount and track the layer, all or nothing (``snapfs.lazy.attach``)."""
        return await self._attacher.add(rec, layer, ranges, labels, nursery=self._nursery,
                                        layer_task=self.lifecycle.layer_task)


__all__ = ["LayerSource", "LayerStatus", "LazyLayers", "layer_id", "layer_source"]
