"""Prometheus metrics for the daemon: RPC counts, latency and errors, snapshots by kind.

Each daemon has its own ``CollectorRegistry`` (not prometheus_client's global one), so
several daemons in one process (tests) never share counters. The snapshot gauge is computed
when scraped, from the snapshotter's own List, so it cannot drift from the truth.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from snapfs.errors import InvalidArgument
from snapfs.snapshots import Info, Kind

log = logging.getLogger(__name__)

# Snapshot RPCs are mostly sub-millisecond metadata work; Prepare/Remove touch disks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

SnapshotCounter = Callable[[], Mapping[Kind, int]]


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


class Metrics:
    """The daemon's metrics. ``observe_rpc`` is thread-safe (prometheus_client locks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
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
