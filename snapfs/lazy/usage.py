"""What each recorded lazy layer holds on disk, read from the root alone (no daemon, no
mount, no network): for ``snapfs df`` and ``snapfs images``.

A materialised layer holds its directory under ``<root>/layers``; a layer still lazy holds
the chunks of it that are in the cache. Which chunks those are comes from its index,
re-read from the ranges its record kept (as a restart does) — so a process that serves no
layer can say what the serving one holds. Sizes are bytes of files (what ``du -b`` counts
for them): ``total`` is the layer's uncompressed regular-file bytes, ``local`` those held
here. Must not change anything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.chunkedtar import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from content.digest import Digest
from content.errors import ContentError
from content.lazyformat import LazyLayer, load_lazy_layer
from content.reference import parse_reference
from snapfs.lazy.counters import stats_key
from snapfs.lazy.layerdb import LayerDB, LayerRecord
from snapfs.lazy.source import Recorder, layer_id
from snapfs.snapshot.usage import disk_usage

TAIL_SIZE = 64 * 1024  # as snapfs.lazy.layers records it


@dataclass(frozen=True, slots=True)
class LayerUsage:
    digest: str
    layer_id: str
    ref: str
    format: str
    state: str  # "lazy" (chunks in the cache) or "local" (materialised)
    total_bytes: int  # uncompressed bytes of its regular files
    local_bytes: int  # of those, held here (cached chunks, or the directory)
    blob_size: int  # compressed
    chunks: tuple[Digest, ...] = ()  # a lazy layer's distinct chunks in the cache
    counts: Mapping[str, int] = field(default_factory=dict)  # persisted fetch counters


def regular_total(layer: LazyLayer) -> tuple[int, dict[Digest, int]]:
    """Its regular files' bytes, and its distinct chunks with their sizes (pure)."""
    regular = [layer.files[e.name] for e in layer.toc.entries
               if e.type == "reg" and e.name in layer.files
               and e.name not in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)]
    chunks = {c.digest: c.size for cs in layer.files.values() for c in cs}
    return sum(c.size for cs in regular for c in cs), chunks


def _present(cache: ChunkCache, chunks: Mapping[Digest, int]) -> dict[Digest, int]:
    out = {}
    for d in chunks:
        with contextlib.suppress(FileNotFoundError):
            out[d] = os.stat(cache.path(d)).st_size
    return out


async def layer_usage(db: LayerDB, cache: ChunkCache, layers_dir: Path,
                      rec: LayerRecord) -> LayerUsage:
    ident = layer_id(rec.digest)
    counts = db.counts(stats_key(rec.digest))
    local = db.local(rec.digest)
    if local is not None and (layers_dir / local.dir).is_dir():
        size = (await trio.to_thread.run_sync(disk_usage, layers_dir / local.dir)).size
        return LayerUsage(str(rec.digest), ident, rec.ref, rec.format, "local",
                          local.total_bytes, size, rec.size, (), counts)
    replay = Recorder(None, parse_reference(rec.ref), rec.digest, db.ranges(rec.digest))
    try:
        layer = await load_lazy_layer(replay, rec.size, what=f"layer {rec.digest.short()}",
                                      toc_digest=rec.toc_digest, tail_size=TAIL_SIZE)
    except ContentError:
        layer = None
    if layer is None:
        return LayerUsage(str(rec.digest), ident, rec.ref, rec.format, "lazy", 0, 0,
                          rec.size, (), counts)
    total, chunks = regular_total(layer)
    present = await trio.to_thread.run_sync(_present, cache, chunks)
    return LayerUsage(str(rec.digest), ident, rec.ref, rec.format, "lazy", total,
                      sum(present.values()), rec.size, tuple(sorted(present, key=str)), counts)


async def recorded_layers(db: LayerDB, cache: ChunkCache, layers_dir: Path
                          ) -> list[LayerUsage]:
    """Every recorded lazy layer's usage, by layer id."""
    records = await trio.to_thread.run_sync(db.all)
    return sorted([await layer_usage(db, cache, layers_dir, r) for r in records],
                  key=lambda u: u.layer_id)


__all__ = ["LayerUsage", "layer_usage", "recorded_layers", "regular_total"]
