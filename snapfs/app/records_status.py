"""Layer reports from a root's records alone, for ``snapfs status`` when no daemon serves.

Must not mount, fetch or open an engine: what it shows is what the records and the files
say (``snapfs.lazy.usage``), with the persisted fetch counters.
"""

from __future__ import annotations

from pathlib import Path

import trio

from content.chunkcache import ChunkCache
from content.metadata import MetadataDB
from snapfs.client.reports import LayerReport
from snapfs.lazy.layerdb import LayerDB
from snapfs.lazy.usage import LayerUsage, recorded_layers


def report_of(u: LayerUsage) -> LayerReport:
    """A layer's usage and persisted counters as a report (pure)."""
    c = u.counts
    return LayerReport(
        layer_id=u.layer_id, digest=u.digest, image=u.ref, format=u.format, state=u.state,
        total_bytes=u.total_bytes, local_bytes=u.local_bytes,
        bytes_fetched=c.get("bytes_fetched", 0), requests=c.get("requests", 0),
        cache_hits=c.get("cache_hits", 0), cache_misses=c.get("cache_misses", 0),
        demand_requests=c.get("demand_requests", 0), demand_bytes=c.get("demand_bytes", 0),
        prefetch_requests=c.get("prefetch_requests", 0),
        prefetch_bytes=c.get("prefetch_bytes", 0),
        background_requests=c.get("background_requests", 0),
        background_bytes=c.get("background_bytes", 0))


async def recorded_reports(root: Path) -> list[LayerReport]:
    """Every recorded lazy layer of ``root``, by layer id."""
    if not (root / "metadata.lmdb").exists():
        return []
    md = await trio.to_thread.run_sync(MetadataDB.open, root)
    try:
        db = await trio.to_thread.run_sync(LayerDB, md)
        usages = await recorded_layers(db, ChunkCache(root / "chunks"), root / "layers")
    finally:
        md.close()
    return [report_of(u) for u in usages]


__all__ = ["recorded_reports", "report_of"]
