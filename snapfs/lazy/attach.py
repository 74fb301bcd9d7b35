"""Putting an indexed lazy layer on the FUSE mount, as one step that either completes or
leaves nothing: its view and fetcher, the mount's directory, its row in the layer table, its
lifecycle task.

Adding touches the mount first (``LayerMount.add_layer``: here, or in ``snapfs
fuse-server``) and then this process's state; a failure after the mount took the layer (the
cache cannot be read, the counters' record is malformed, the new directory does not answer)
takes it off the mount again and leaves no row, so a later Prepare finds no directory that
nothing records — unless the view was already there (a released layer still mounted, which
goes on serving its users).

Must not index (``snapfs.lazy.indexer``) or decide when layers go (``snapfs.lazy.lifecycle``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.errors import ContentError
from content.lazyformat import LazyLayer
from content.reference import parse_reference
from snapfs.lazy.counters import seed, stats_key
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.layerdb import LayerDB, LayerRecord
from snapfs.lazy.mount import InlineMount, LayerMount
from snapfs.lazy.schedule import FetchOptions
from snapfs.lazy.scheduler import FetchScheduler
from snapfs.lazy.source import LayerSource, layer_id
from snapfs.lazy.state import LayerState, LayerTable
from snapfs.lazy.view import LazyLayerView

log = logging.getLogger(__name__)

LayerTask = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class LazyHooks:
    """Callbacks for work that should start early in a lazy Prepare (startup profiles):
    ``preparing(labels)`` as the Prepare of a lazy layer begins, and ``view_made(view,
    labels)`` once its fetcher exists, before the mount takes the layer (with a FUSE server
    its add parses the TOC again and builds the tree: ~0.4 s on the python image, which a
    profile's prefetch can use)."""

    preparing: Callable[[Mapping[str, str]], None] | None = None
    view_made: Callable[[LazyLayerView, Mapping[str, str]], None] | None = None


@dataclass(frozen=True, slots=True)
class Attacher:
    """What adding a layer needs: where views read from and where they are put."""

    source: LayerSource
    cache: ChunkCache
    scheduler: FetchScheduler
    options: FetchOptions
    mount: LayerMount
    table: LayerTable
    db: LayerDB
    userxattr: bool = False
    hooks: LazyHooks = field(default_factory=LazyHooks)

    def make_view(self, rec: LayerRecord, layer: LazyLayer,
                  nursery: trio.Nursery | None) -> LazyLayerView:
        """A new view of ``layer`` with its own fetcher (its aside fetches in ``nursery``)."""
        fetcher = LayerFetcher(self.source, parse_reference(rec.ref), rec.digest, layer,
                               self.cache, scheduler=self.scheduler, window=self.options.window,
                               nursery=nursery)
        return LazyLayerView(layer_id(rec.digest), layer, fetcher, userxattr=self.userxattr,
                             read_timeout=self.options.read_timeout)

    async def mount_view(self, rec: LayerRecord, layer: LazyLayer, ranges: Mapping[int, bytes],
                         *, nursery: trio.Nursery | None = None,
                         labels: Mapping[str, str] | None = None) -> LazyLayerView:
        """A new view, added to the mount (``ranges``, the verified index's bytes, let a FUSE
        server rebuild the same view); with ``labels``, ``hooks.view_made`` is told first."""
        view = self.make_view(rec, layer, nursery)
        if labels is not None and self.hooks.view_made is not None:
            self.hooks.view_made(view, labels)
        await self.mount.add_layer(view, rec, ranges)
        return view

    async def add(self, rec: LayerRecord, layer: LazyLayer, ranges: Mapping[int, bytes],
                  labels: Mapping[str, str] | None, *, nursery: trio.Nursery | None,
                  layer_task: LayerTask) -> Path:
        """Mount ``layer`` and start its lifecycle (``layer_task`` in ``nursery``); its
        directory on the mount. All or nothing (see the module docstring)."""
        ident = layer_id(rec.digest)
        old = self.table.get(ident)
        reused = old is not None and old.view is not None
        if old is not None and old.view is not None:
            # Released, but a mount still held its FUSE directory: it serves again.
            view = old.view
        else:
            view = await self.mount_view(rec, layer, ranges, nursery=nursery,
                                         labels=labels or {})
        path = self.mount.mountpoint / ident
        try:
            row = await self._record(rec, view, old, labels, scan=nursery is None)
        except BaseException:
            if not reused:
                with trio.CancelScope(shield=True), contextlib.suppress(ContentError, OSError):
                    await self.mount.remove_layer(ident)
                log.warning("layer %s: adding it failed half-way; taken off the mount",
                            rec.digest.short())
            raise
        if nursery is not None:
            nursery.start_soon(layer_task, ident)
        else:
            row.startup.set()
        return path

    async def _record(self, rec: LayerRecord, view: LazyLayerView, old: LayerState | None,
                      labels: Mapping[str, str] | None, *, scan: bool) -> LayerState:
        ident = view.layer_id
        self.scheduler.touch()  # its container starts next: background holds off a moment
        # What earlier runs (or other layers sharing chunks) left in the cache counts as
        # local: the layer's task finds it (lifecycle), off the Prepare's path; without a
        # task (``scan``), here.
        if scan:
            await view.fetcher.refresh_cached()
        saved = self.db.counts(stats_key(rec.digest))  # counted by earlier processes
        seed(view.fetcher.stats, saved)
        if self.mount.served and isinstance(self.mount, InlineMount):
            # From a thread: the lookup it causes is answered by this loop. It leaves the
            # entry in the kernel's cache (24 h) for code that stats it from this loop.
            await trio.to_thread.run_sync(os.stat, self.mount.mountpoint / ident)
        return self.table.put(LayerState(
            ident, rec, view=view, total_bytes=view.fetcher.total_bytes,
            stats=view.fetcher.stats, doomed_dir=old.doomed_dir if old else None,
            labels=dict(labels or {}), broken=view.broken, saved=saved))


__all__ = ["Attacher", "LayerTask", "LazyHooks"]
