"""The lazy layers' status as values: :class:`LayerReport`, and gathering them.

The numbers live in the process that serves the FUSE mount: :func:`collect_reports` reads
them from its ``LazyLayers`` (``layer_status()``: state, sizes, fetch counters) and its
``LayerFS`` (FUSE requests by operation), through the small Protocols below. ``snapfs
status``, the daemon's status socket and its metrics all show these values. Must not do
I/O: no sockets, no files — moving reports between processes is ``snapfs.client.status``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from content.errors import InvalidArgument, NotFound

if TYPE_CHECKING:  # a value module: `snapfs status` reads reports without loading FUSE
    from snapfs.fuse import LayerStats

STATES = ("lazy", "fetching", "local", "broken")


class FetchCounters(Protocol):
    @property
    def requests(self) -> int: ...
    @property
    def bytes_fetched(self) -> int: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_misses(self) -> int: ...
    demand_requests: int
    demand_bytes: int
    prefetch_requests: int
    prefetch_bytes: int
    background_requests: int
    background_bytes: int
    window_chunks: int
    window_hits: int


class LayerStatusLike(Protocol):
    """``snapfs.lazy.layers.LayerStatus``, as far as status needs it."""

    @property
    def layer_id(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def ref(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def last_error(self) -> str: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def local_bytes(self) -> int: ...
    @property
    def stats(self) -> FetchCounters: ...


class StatusSource(Protocol):
    """What status needs of ``snapfs.lazy.layers.LazyLayers``."""

    def fuse_stats(self, ident: str) -> LayerStats: ...

    async def refresh_fuse_stats(self) -> None: ...

    def layer_status(self) -> Sequence[LayerStatusLike]: ...


@dataclass(frozen=True, slots=True)
class LayerReport:
    """One lazy layer as ``snapfs status`` shows it (and ``--json`` prints it)."""

    layer_id: str
    digest: str
    image: str
    format: str
    state: str  # lazy | fetching | local | broken
    total_bytes: int
    local_bytes: int
    bytes_fetched: int  # compressed bytes received from the registry
    requests: int  # Range requests sent
    cache_hits: int
    cache_misses: int
    bytes_read: int = 0  # bytes served through FUSE
    fuse_requests: Mapping[str, int] = field(default_factory=dict)
    healthy: bool = True
    # What the fetched bytes were for: reads (demand), startup sets (prefetch), completing
    # the layer (background).
    demand_requests: int = 0
    demand_bytes: int = 0
    prefetch_requests: int = 0
    prefetch_bytes: int = 0
    background_requests: int = 0
    background_bytes: int = 0
    # Neighbouring chunks misses brought along (snapfs.lazy.locality), and how many of them
    # were read later: the locality window's hit rate.
    window_chunks: int = 0
    window_hits: int = 0
    # The layer's last failed read, naming registry, repository and blob; or why it is out
    # of service. "" if none.
    last_error: str = ""

    @property
    def window_hit_rate(self) -> float | None:
        return self.window_hits / self.window_chunks if self.window_chunks else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fuse_requests": dict(self.fuse_requests)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerReport:
        try:
            return cls(**{**obj, "fuse_requests": dict(obj.get("fuse_requests") or {})})
        except TypeError as exc:
            raise InvalidArgument(f"layer status {obj.get('layer_id', '?')}: {exc}") from exc


def collect_reports(source: StatusSource) -> list[LayerReport]:
    """Every lazy layer of ``source``, by layer id. Call it on the loop that owns it."""
    out = []
    for st in source.layer_status():
        try:
            fuse = source.fuse_stats(st.layer_id)
            requests, bytes_read, healthy = dict(fuse.requests), fuse.bytes_read, fuse.healthy
        except NotFound:  # known to the layer store but not mounted (any more)
            requests, bytes_read, healthy = {}, 0, True
        out.append(LayerReport(
            layer_id=st.layer_id, digest=st.digest, image=st.ref, format=st.format,
            state=st.state, total_bytes=st.total_bytes, local_bytes=st.local_bytes,
            bytes_fetched=st.stats.bytes_fetched, requests=st.stats.requests,
            cache_hits=st.stats.cache_hits, cache_misses=st.stats.cache_misses,
            bytes_read=bytes_read, fuse_requests=requests, healthy=healthy,
            demand_requests=st.stats.demand_requests, demand_bytes=st.stats.demand_bytes,
            prefetch_requests=st.stats.prefetch_requests,
            prefetch_bytes=st.stats.prefetch_bytes,
            background_requests=st.stats.background_requests,
            background_bytes=st.stats.background_bytes,
            window_chunks=st.stats.window_chunks, window_hits=st.stats.window_hits,
            last_error=st.last_error))
    return sorted(out, key=lambda r: r.layer_id)


async def gather_reports(source: StatusSource) -> list[LayerReport]:
    """:func:`collect_reports` as a coroutine (for ``TrioPortal.run`` from a scrape thread),
    with the FUSE counters brought up to date first (a FUSE server's are in another process)."""
    await source.refresh_fuse_stats()
    return collect_reports(source)


__all__ = ["STATES", "FetchCounters", "LayerReport", "LayerStatusLike", "StatusSource",
           "collect_reports", "gather_reports"]
