"""Prometheus metrics for the daemon: RPC counts, latency and errors, snapshots by kind, per
lazy layer its state, bytes local against total, fetches, cache hits and FUSE requests (the
numbers ``snapfs status`` shows), the chunk cache (size, limit, evictions by cause), garbage
collections and the bytes they freed, and the standard ``process_*`` metrics.

Names follow Prometheus' conventions: base units (bytes, seconds) at the end of the name,
``_total`` only on counters (prometheus_client appends it to counter families), gauges
without it::

    snapfs_layer_size_bytes{layer}            gauge    uncompressed bytes of the layer's files
    snapfs_layer_local_bytes{layer}           gauge    of those, held locally
    snapfs_fetch_requests_total{layer}        counter  Range requests
    snapfs_fetch_bytes_total{layer}           counter  compressed bytes fetched
    snapfs_chunk_cache_size_bytes             gauge    what the chunk cache holds
    snapfs_chunk_cache_limit_bytes            gauge    [cache] max_size (0: none)
    snapfs_chunk_cache_evictions_total{cause} counter  max_size | min_free
    snapfs_chunk_cache_evicted_bytes_total{cause}
    snapfs_gc_runs_total, snapfs_gc_freed_bytes_total

Each daemon has its own ``CollectorRegistry`` (not prometheus_client's global one), so
several daemons in one process (tests) never share counters. The snapshot and layer
families are computed when scraped, from the snapshotter's own List and the lazy layers'
status, so they cannot drift from the truth.

Must not keep its own copy of snapshot or layer state: every family is read when scraped.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snapfs.client.reports import STATES, LayerReport
from snapfs.errors import InvalidArgument
from snapfs.snapshot.types import Info, Kind

log = logging.getLogger(__name__)

# Snapshot RPCs are mostly sub-millisecond metadata work; Prepare/Remove touch disks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

SnapshotCounter = Callable[[], Mapping[Kind, int]]
LayerReporter = Callable[[], Sequence[LayerReport]]


def count_by_kind(infos: list[Info]) -> dict[Kind, int]:
    tally = Tally(info.kind for info in infos)
    return {kind: tally.get(kind, 0) for kind in Kind if kind is not Kind.UNKNOWN}


class _SnapshotCollector(Collector):
    def __init__(self, count: SnapshotCounter) -> None:
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "snapfs_snapshots", "Snapshots held by the snapshotter, by kind", labels=["kind"]
        )
        try:
            counts = self._count()
        except Exception:  # a scrape must not take the endpoint down; say why in the log
            log.exception("metrics: counting snapshots failed")
            return
        for kind, n in sorted(counts.items()):
            family.add_metric([kind.name.lower()], n)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Describing must not call into the snapshotter (it runs at registration time).
        return iter(())


def layer_families(reports: Sequence[LayerReport]) -> list[Metric]:
    """The per-layer families of ``reports`` (pure)."""
    state = GaugeMetricFamily("snapfs_layer_state",
                              "1 for the lazy layer's current state (lazy, fetching, local)",
                              labels=["layer", "state"])
    total = GaugeMetricFamily("snapfs_layer_size_bytes",
                              "Uncompressed bytes of the lazy layer's files", labels=["layer"])
    local = GaugeMetricFamily("snapfs_layer_local_bytes",
                              "Uncompressed bytes of the lazy layer held locally",
                              labels=["layer"])
    requests = CounterMetricFamily("snapfs_fetch_requests",
                                   "Range requests sent for the lazy layer", labels=["layer"])
    fetched = CounterMetricFamily("snapfs_fetch_bytes",
                                  "Compressed bytes fetched for the lazy layer",
                                  labels=["layer"])
    hits = CounterMetricFamily("snapfs_cache_hits",
                               "Chunk lookups served from the local cache", labels=["layer"])
    misses = CounterMetricFamily("snapfs_cache_misses",
                                 "Chunk lookups that had to be fetched", labels=["layer"])
    window = CounterMetricFamily("snapfs_window_chunks",
                                 "Neighbouring chunks fetched along with a miss (locality "
                                 "window)", labels=["layer"])
    window_hits = CounterMetricFamily("snapfs_window_hits",
                                      "Of the window's chunks, those read later",
                                      labels=["layer"])
    fuse = CounterMetricFamily("snapfs_fuse_requests",
                               "FUSE requests answered for the lazy layer, by operation",
                               labels=["layer", "op"])
    for r in reports:
        for name in STATES:
            state.add_metric([r.layer_id, name], 1.0 if r.state == name else 0.0)
        total.add_metric([r.layer_id], r.total_bytes)
        local.add_metric([r.layer_id], r.local_bytes)
        requests.add_metric([r.layer_id], r.requests)
        fetched.add_metric([r.layer_id], r.bytes_fetched)
        hits.add_metric([r.layer_id], r.cache_hits)
        misses.add_metric([r.layer_id], r.cache_misses)
        window.add_metric([r.layer_id], r.window_chunks)
        window_hits.add_metric([r.layer_id], r.window_hits)
        for op, n in sorted(r.fuse_requests.items()):
            fuse.add_metric([r.layer_id, op], n)
    return [state, total, local, requests, fetched, hits, misses, window, window_hits, fuse]


_T = TypeVar("_T")


class _ReportCollector(Collector, Generic[_T]):
    """Families made at scrape time from what ``report`` answers then."""

    def __init__(self, report: Callable[[], _T], families: Callable[[_T], list[Metric]],
                 what: str) -> None:
        self._report = report
        self._families = families
        self._what = what

    def collect(self) -> Iterator[Metric]:
        try:
            reported = self._report()
        except Exception:  # a scrape must not take the endpoint down; say why in the log
            log.exception("metrics: collecting %s failed", self._what)
            return
        yield from self._families(reported)

    def describe(self) -> Iterator[Metric]:
        return iter(())


@dataclass(frozen=True, slots=True)
class DiskStats:
    """The chunk cache and garbage collection, as scraped."""

    cache_bytes: int
    cache_limit: int
    evictions: Mapping[str, int]  # by cause
    evicted_bytes: Mapping[str, int]
    gc_runs: int
    gc_freed_bytes: int


def disk_families(d: DiskStats) -> list[Metric]:
    """The cache and GC families of ``d`` (pure)."""
    size = GaugeMetricFamily("snapfs_chunk_cache_size_bytes",
                             "Bytes of verified chunks in the chunk cache", value=d.cache_bytes)
    limit = GaugeMetricFamily("snapfs_chunk_cache_limit_bytes",
                              "The chunk cache's [cache] max_size (0: unbounded)",
                              value=d.cache_limit)
    evictions = CounterMetricFamily("snapfs_chunk_cache_evictions",
                                    "Chunks evicted from the cache, by cause", labels=["cause"])
    evicted = CounterMetricFamily("snapfs_chunk_cache_evicted_bytes",
                                  "Bytes evicted from the chunk cache, by cause",
                                  labels=["cause"])
    for cause, n in sorted(d.evictions.items()):
        evictions.add_metric([cause], n)
        evicted.add_metric([cause], d.evicted_bytes.get(cause, 0))
    runs = CounterMetricFamily("snapfs_gc_runs", "Collections of unneeded chunks and layer "
                               "directories", value=d.gc_runs)
    freed = CounterMetricFamily("snapfs_gc_freed_bytes", "Bytes those collections freed",
                                value=d.gc_freed_bytes)
    return [size, limit, evictions, evicted, runs, freed]


class Metrics:
    """The daemon's metrics. ``observe_rpc`` is thread-safe (prometheus_client locks)."""

    def __init__(self) -> None:
        # No *_created gauge beside each counter and histogram: they double the series and
        # break the "no _total on gauges, unit at the end" naming of everything else.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
        self.registry = CollectorRegistry(auto_describe=False)
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "snapfs_grpc_requests", "Snapshots RPCs handled, by method and status code",
            ["method", "code"], registry=self.registry,
        )
        self.errors = Counter(
            "snapfs_grpc_errors", "Snapshots RPCs that failed, by method and status code",
            ["method", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "snapfs_grpc_request_duration_seconds", "Snapshots RPC latency, by method",
            ["method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.errors.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def track_snapshots(self, count: SnapshotCounter) -> None:
        """Export ``snapfs_snapshots{kind}``, computed by ``count`` at each scrape."""
        self.registry.register(_SnapshotCollector(count))

    def track_layers(self, report: LayerReporter) -> None:
        """Export the per-layer families, from ``report`` at each scrape. Scrapes run in the
        HTTP server's thread: ``report`` must hop to the loop that owns the layers (e.g.
        ``lambda: portal.run(gather_reports, lazy)``)."""
        self.registry.register(_ReportCollector(report, layer_families, "lazy layer status"))


    def track_disk(self, report: Callable[[], DiskStats]) -> None:
        """Export the chunk cache and GC families, from ``report`` at each scrape (in the
        HTTP server's thread: ``report`` must only read thread-safe numbers or files that
        are not on the FUSE mount)."""
        self.registry.register(_ReportCollector(report, disk_families, "chunk cache numbers"))


def parse_listen_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"metrics address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


async def serve_metrics(
    metrics: Metrics,
    address: str,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``/metrics`` over HTTP on ``address`` until cancelled; reports (host, port) bound."""
    host, port = parse_listen_address(address)
    try:
        httpd, thread = await trio.to_thread.run_sync(
            lambda: start_http_server(port, host, registry=metrics.registry)
        )
    except OSError as exc:
        raise InvalidArgument(f"metrics address {address}: cannot listen: {exc}") from exc
    bound = httpd.server_address
    try:
        log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
        task_status.started((str(bound[0]), int(bound[1])))
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(httpd.shutdown)
            httpd.server_close()
            await trio.to_thread.run_sync(thread.join)
