"""Bringing recorded lazy layers back at startup (``LazyLayers.restore``).

Materialised layers are used from their directories. Every other recorded layer is
re-indexed from the ranges its record kept (no network; the TOC is verified against its
recorded digest again) and added to the mount before anything is served, so committed lazy
snapshots' lowerdirs exist again after a restart or a crash. With a ``snapfs fuse-server``
that outlived the daemon, adding is a reconciliation: the server keeps serving the views it
has (running containers never noticed the restart) and the daemon rebuilds its side.
If instead the server died while layers were lazy (its mount is stale), those layers are
lost: their snapshots answer Unavailable, the mount a container holds is dead.

Must not decide snapshot semantics, nor fetch anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from content.errors import ContentError, InvalidArgument
from content.lazyformat import LazyLayer, load_lazy_layer
from content.reference import parse_reference
from snapfs.lazy.layerdb import LayerDB, LayerRecord
from snapfs.lazy.mount import LayerMount
from snapfs.lazy.source import Recorder, layer_id
from snapfs.lazy.state import LayerState, LayerTable

AddLayer = Callable[[LayerRecord, LazyLayer, Mapping[int, bytes]], Awaitable[object]]

log = logging.getLogger(__name__)


async def reload_layer(rec: LayerRecord, ranges: Mapping[int, bytes],
                       tail_size: int) -> LazyLayer:
    """A recorded layer's index, from the ranges its record kept (no network)."""
    what = f"layer {rec.digest.short()} of {rec.ref}"
    replay = Recorder(None, parse_reference(rec.ref), rec.digest, dict(ranges))
    layer = await load_lazy_layer(replay, rec.size, what=what, toc_digest=rec.toc_digest,
                                  tail_size=tail_size)
    if layer is None:
        raise InvalidArgument(f"{what}: recorded ranges hold no lazy footer")
    return layer


async def restore_layers(db: LayerDB, table: LayerTable, mount: LayerMount, *,
                         layers_dir: Path, lost: dict[str, LayerRecord], add: AddLayer,
                         tail_size: int) -> int:
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
            row = table.put(LayerState(ident, rec, local_dir=layers_dir / local.dir,
                                            total_bytes=local.total_bytes))
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
            ranges = await trio.to_thread.run_sync(db.ranges, rec.digest)
            await add(rec, await reload_layer(rec, ranges, tail_size), ranges)
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


__all__ = ["lose_layers", "reload_layer", "restore_layers"]
