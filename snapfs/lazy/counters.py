"""Fetch and cache counters that outlive the process that counted them.

A layer's ``FetchStats`` (requests, bytes fetched, cache hits, …) and the chunk cache's
evictions are counted in the memory of the process serving the layers; ``snapfs status`` or
``df`` run later, or without a daemon, must show the same numbers. So they are persisted in
the layer records (``snapfs.lazy.layerdb``: ``stats/<digest>``, ``counters/cache``): a
layer's counters are seeded from its record when it is added, and every flush adds what was
counted since the last one (a delta, so processes sharing a root add up). Pure, but for
:func:`seed` which sets fields of a live ``FetchStats``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from content.chunkbudget import Evictions
from snapfs.lazy.fetcher import FetchStats
from snapfs.lazy.layerdb import stats_key, usage_key

CACHE_KEY = "counters/cache"


def as_counts(stats: FetchStats) -> dict[str, int]:
    return {k: int(v) for k, v in asdict(stats).items()}


def seed(stats: FetchStats, saved: Mapping[str, int]) -> None:
    """Start ``stats`` from the persisted values (fields this version does not know are
    ignored)."""
    for name, value in saved.items():
        if hasattr(stats, name):
            setattr(stats, name, int(value))


def delta(now: Mapping[str, int], flushed: Mapping[str, int]) -> dict[str, int]:
    """What was counted since ``flushed`` (the values at the last flush)."""
    return {k: v - flushed.get(k, 0) for k, v in now.items() if v != flushed.get(k, 0)}


def eviction_counts(ev: Evictions) -> dict[str, int]:
    out = {f"evictions_{cause}": n for cause, n in ev.chunks.items()}
    out.update({f"evicted_bytes_{cause}": n for cause, n in ev.bytes.items()})
    return out


__all__ = ["CACHE_KEY", "as_counts", "delta", "eviction_counts", "seed", "stats_key", "usage_key"]
