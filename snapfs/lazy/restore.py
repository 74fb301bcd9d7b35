"""Bringing recorded lazy layers back at startup (``LazyLayers.restore``), and losing them
with a FUSE server that died.

Materialised layers are used from their directories. Every other recorded layer is
re-indexed from the ranges its record kept (no network; the TOC is verified against its
recorded digest again) and added to the mount before anything is served, so committed lazy
snapshots' lowerdirs exist again after a restart or a crash. With a ``snapfs fuse-server``
that outlived the daemon, adding is a reconciliation: the server keeps serving the views it
has (running containers never noticed the restart) and the daemon rebuilds its side.
If instead the server died while layers were lazy (its mount is stale), those layers are
lost: their snapshots answer Unavailable, the mount a container holds is dead. Counters
persisted by earlier processes (``snapfs.lazy.counters``) seed the restored rows.

A draining server (an upgrade) hands over instead: :func:`move_layers` re-adds every layer
to a fresh server, from the same records.

Must not decide snapshot semantics, nor fetch anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from content.errors import ContentError
from content.lazyformat import LazyLayer
from snapfs.lazy.counters import seed
from snapfs.lazy.layerdb import LayerDB, LayerRecord, stats_key
from snapfs.lazy.mount import LayerMount
from snapfs.lazy.source import layer_id
from snapfs.lazy.state import LayerState, LayerTable

# (record) → its index and the ranges it was read from; (record, index, ranges) → mounted.
Reload = Callable[[LayerRecord], Awaitable[tuple[LazyLayer, Mapping[int, bytes]]]]
AddLayer = Callable[[LayerRecord, LazyLayer, Mapping[int, bytes]], Awaitable[object]]

log = logging.getLogger(__name__)


async def restore_layers(db: LayerDB, table: LayerTable, mount: LayerMount, *,
                         layers_dir: Path, lost: dict[str, LayerRecord], reload: Reload,
                         add: AddLayer) -> int:
    """Bring back every layer recorded in ``db`` into ``table`` (lazy ones through ``add``,
    onto ``mount``; those a dead server lost into ``lost``); returns how many."""
    restored = 0
    pending = []
    for rec in await trio.to_thread.run_sync(db.all):
        ident = layer_id(rec.digest)
        if table.live(ident) is not None:
            continue
        local = db.local(rec.digest)
        if local is not None and (layers_dir / local.dir).is_dir():
            saved = db.counts(stats_key(rec.digest))
            row = table.put(LayerState(ident, rec, local_dir=layers_dir / local.dir,
                                       total_bytes=local.total_bytes, saved=saved))
            seed(row.stats, saved)
            row.startup.set()
            restored += 1
        else:
            pending.append(rec)
    if pending and not await mount.ensure_served():
        log.error("restore: %d lazy layer(s) recorded but %s cannot be served; snapshots "
                  "on them will not mount", len(pending), mount.mountpoint)
        return restored
    if pending and mount.previous_died:
        for rec in pending:
            lost[layer_id(rec.digest)] = rec
        log.error("restore: the FUSE server died while %d layer(s) were lazy; their "
                  "snapshots answer Unavailable until removed", len(pending))
        return restored
    for rec in pending:
        what = f"layer {rec.digest.short()} of {rec.ref}"
        try:
            layer, ranges = await reload(rec)
            await add(rec, layer, ranges)
        except ContentError as exc:
            # One bad record must not keep the others (and the daemon) down; snapshots
            # on this layer fail to mount and say so.
            log.error("restore: %s: %s", what, exc)
            continue
        restored += 1
    local_count = sum(1 for r in table.live_rows() if r.local_dir is not None)
    log.info("restore: %d layer(s) restored (%d materialised)", restored, local_count)
    return restored


def lose_layers(table: LayerTable, lost: dict[str, LayerRecord]) -> None:
    """The FUSE server died: every layer it served lazily moves from ``table`` to ``lost``
    (its mounts are dead); materialised ones go on from their directories (no FUSE view any
    more), and new layers get a fresh server."""
    for row in list(table.live_rows()):
        if row.view is None or row.record is None:
            continue
        if row.local_dir is None:
            if row.scope is not None:
                row.scope.cancel()
            lost[row.ident] = row.record
            table.release(row.ident)
            table.drop_if_done(row.ident)
            log.error("layer %s: lost with its FUSE server; its snapshots answer "
                      "Unavailable", row.ident[:12])
        else:
            table.update(row.ident, view=None, fuse_unused_since=None)


async def move_layers(table: LayerTable, db: LayerDB, mount: LayerMount) -> int:
    """The FUSE server drains (an upgrade): every layer it served, with its view and index
    ranges, goes to a fresh server (``ensure_served`` starts one), so that new mounts use
    that one (``LayerMount.path_of``). Running containers keep reading through the old
    server until it exits. Returns how many moved; one that fails stays on the old server."""
    if not await mount.ensure_served():
        log.error("fuse: no fresh FUSE server after a drain: new mounts of lazy layers use "
                  "the draining one until it exits")
        return 0
    moved = 0
    for row in list(table.live_rows()):
        if row.view is None or row.record is None:
            continue
        if row.local_dir is not None and not row.held:
            continue  # new mounts use its directory; running ones keep the old server
        try:
            ranges = await trio.to_thread.run_sync(db.ranges, row.record.digest)
            await mount.add_layer(row.view, row.record, ranges)
        except ContentError as exc:
            log.error("layer %s: not moved to the fresh FUSE server: %s", row.ident[:12], exc)
            continue
        moved += 1
    log.info("fuse: %d layer(s) moved to the fresh FUSE server", moved)
    return moved


__all__ = ["AddLayer", "Reload", "lose_layers", "move_layers", "restore_layers"]
