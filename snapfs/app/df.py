"""``snapfs df``: what the root holds on disk — images, layers, the chunk cache, content
blobs — and how much of it ``snapfs prune`` would give back.

Read from the root alone (the metadata records, the files), with no engine: the same
answer with or without a daemon, and no mount, fetch or registry request. Sizes are bytes of
files, as ``du -b`` counts them: an image's size is the uncompressed bytes of its layers
(``compressed``: their blobs' sizes, as the manifest lists them), ``local`` what of it is on
this disk (all of a native or materialised layer, the cached chunks of a lazy one). The
plans are pure functions over records; :func:`disk_report` reads them. Must not print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from content import gc
from content.chunkcache import ChunkCache
from content.leases import active_leases
from content.metadata import MetadataDB
from content.store import ContentStore
from snapfs.app.gc import image_roots, leased_content
from snapfs.app.images import ImageStore
from snapfs.app.sizes import ImageUsage, LayerRow, image_usage, layer_rows, manifest_layers_size
from snapfs.config import Config
from snapfs.lazy.counters import CACHE_KEY
from snapfs.lazy.layerdb import LayerDB
from snapfs.lazy.open import cache_limits
from snapfs.lazy.usage import recorded_layers
from snapfs.snapshot.metastore import MetaStore, SnapshotRecord
from snapfs.snapshot.types import Kind


@dataclass(frozen=True, slots=True)
class DiskReport:
    images: list[ImageUsage]
    layers: list[LayerRow]
    cache: dict[str, Any]  # chunks, bytes, limit, min_free, evictions, evicted_bytes
    content: dict[str, int]  # blobs, bytes
    reclaimable: dict[str, int]  # snapshots, blobs, chunks, bytes
    totals: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def unused_snapshots(records: Sequence[SnapshotRecord], keep: set[str]) -> set[str]:
    """Committed snapshots ``remove_unused_snapshots`` would remove: none of ``keep``,
    repeatedly stripping leaves (pure)."""
    gone: set[str] = set()
    while True:
        live = [r for r in records if r.key not in gone]
        parents = {r.parent for r in live}
        leaves = {r.key for r in live if r.kind == Kind.COMMITTED and r.key not in keep
                  and r.key not in parents}
        if not leaves:
            return gone
        gone |= leaves


def _read(config: Config, md: MetadataDB) -> tuple[Any, ...]:
    store = ContentStore(config.root / "content", metadata=md)
    images = ImageStore(metadata=md)
    records = MetaStore(md).with_transaction(False, lambda tx: list(tx.walk()))
    blobs = store.list()
    roots = [*image_roots(images, store), *leased_content(config.root)]
    garbage = set(gc.unreachable(blobs, roots))
    return images.list(), records, blobs, garbage


async def disk_report(config: Config) -> DiskReport:
    """What ``config.root`` holds, and what a prune would give back."""
    md = await trio.to_thread.run_sync(MetadataDB.open, config.root)
    try:
        db = await trio.to_thread.run_sync(LayerDB, md)
        images, records, blobs, garbage = await trio.to_thread.run_sync(_read, config, md)
        cache = ChunkCache(config.root / "chunks")
        lazy = {u.layer_id: u for u in await recorded_layers(db, cache, config.root / "layers")}
        cached = await trio.to_thread.run_sync(cache.digests)
        counts = db.counts(CACHE_KEY)
    finally:
        md.close()
    rows = layer_rows(records, {k: (u.state, u.total_bytes, u.local_bytes)
                                for k, u in lazy.items()})
    blobs_dir = config.root / "content" / "blobs"
    usage = [image_usage(r, manifest_layers_size(blobs_dir, r), rows) for r in images]
    leased = active_leases(config.root).snapshots
    keep = {str(c) for r in images for c in r.chain_ids} | set(leased)
    unused = unused_snapshots(records, keep)
    kept_lowers = {Path(r.lower).name for r in records if r.lower and r.key not in unused}
    needed = {d for u in lazy.values() if u.layer_id in kept_lowers for d in u.chunks}
    stray = [(d, n) for d, n in cached if d not in needed]
    freed_layers = sum(rows[k].local_bytes for k in unused if k in rows
                       and rows[k].kind != "lazy")
    limits = cache_limits(config)
    evictions = sum(v for k, v in counts.items() if k.startswith("evictions_"))
    evicted = sum(v for k, v in counts.items() if k.startswith("evicted_bytes_"))
    cache_row = {"chunks": len(cached), "bytes": sum(n for _, n in cached),
                 "limit": limits.max_bytes, "min_free": limits.min_free,
                 "evictions": evictions, "evicted_bytes": evicted}
    content = {"blobs": len(blobs), "bytes": sum(b.size for b in blobs)}
    blob_garbage = sum(b.size for b in blobs if b.digest in garbage)
    reclaim = {"snapshots": len(unused), "blobs": len(garbage), "chunks": len(stray),
               "bytes": freed_layers + blob_garbage + sum(n for _, n in stray)}
    layers = sorted(rows.values(), key=lambda r: r.snapshot)
    totals = {"bytes": content["bytes"] + cache_row["bytes"]
              + sum(r.local_bytes for r in layers if r.kind != "lazy")}
    return DiskReport(usage, layers, cache_row, content, reclaim, totals)


__all__ = ["DiskReport", "disk_report", "unused_snapshots"]
