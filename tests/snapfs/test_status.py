"""Layer status: reports from the lazy layers and the FUSE counters, the daemon's status
socket (status and recording), and the same numbers as Prometheus metrics."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from content.errors import Unavailable
from snapfs.client.reports import LayerReport, collect_reports
from snapfs.client.status import RemoteRecording, query_status
from snapfs.daemon.metrics import DiskStats, Metrics, serve_metrics
from snapfs.daemon.status_server import serve_status
from snapfs.fuse import LayerFS, LayerStats, Node
from snapfs.fuse.inodes import ROOT_INODE
from snapfs.fuse.supervisor import FuseSupervisor
from snapfs.lazy.mount import InlineMount
from tests.snapfs.fuse_memlayer import mem_layer, sample_files


@dataclass
class Counters:
    requests: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    demand_requests: int = 0
    demand_bytes: int = 0
    prefetch_requests: int = 0
    prefetch_bytes: int = 0
    background_requests: int = 0
    background_bytes: int = 0
    window_chunks: int = 0
    window_hits: int = 0


@dataclass
class Status:
    layer_id: str
    digest: str
    ref: str
    format: str
    state: str
    total_bytes: int
    local_bytes: int
    stats: Counters = field(default_factory=Counters)
    last_error: str = ""


@dataclass
class Source:
    fs: LayerFS
    statuses: list[Status]

    def layer_status(self) -> list[Status]:
        return self.statuses

    def fuse_stats(self, ident: str) -> LayerStats:
        return self.fs.stats(ident)

    @property
    def mount(self) -> InlineMount:
        return InlineMount(self.fs, FuseSupervisor(self.fs, None))

    def layer_root(self, ident: str) -> Node:
        return self.fs.layer_root(ident)

    async def refresh_fuse_stats(self) -> None:
        pass

    # Every layer here is served through FUSE already: holding changes nothing.
    async def hold_fuse(self, idents: Sequence[str]) -> None:
        pass

    def release_fuse(self, idents: Sequence[str]) -> None:
        pass


def source() -> Source:
    fs = LayerFS(Path("/nonexistent"))
    fs.add_layer(mem_layer("aaa", sample_files()))
    return Source(fs, [
        Status("aaa", "sha256:aaa", "127.0.0.1:5000/app:1", "estargz", "fetching", 1000, 400,
               Counters(3, 350, 7, 2)),
        Status("bbb", "sha256:bbb", "127.0.0.1:5000/app:1", "zstd:chunked", "local", 50, 50),
    ])


async def _cat(fs: LayerFS, path: str) -> bytes:
    ino = ROOT_INODE
    for part in path.split("/"):
        ino = (await fs.lookup(ino, part.encode())).st_ino
    fh = (await fs.open(ino, 0)).fh
    try:
        return await fs.read(fh, 0, 4096)
    finally:
        await fs.release(fh)


async def test_reports_join_layer_status_with_fuse_counters() -> None:
    src = source()
    await _cat(src.fs, "aaa/etc/passwd")
    a, b = collect_reports(src)
    assert (a.layer_id, a.state, a.local_bytes, a.total_bytes) == ("aaa", "fetching", 400, 1000)
    assert (a.requests, a.bytes_fetched, a.cache_hits, a.cache_misses) == (3, 350, 7, 2)
    assert a.bytes_read == len(b"root:x:0:0:root:/root:/bin/sh\n")
    assert a.fuse_requests["open"] == 1 and a.fuse_requests["read"] == 1
    # Known to the layer store but not mounted: no FUSE numbers, still listed.
    assert (b.layer_id, b.state, b.fuse_requests, b.bytes_read) == ("bbb", "local", {}, 0)
    assert LayerReport.from_json(a.to_json()) == a


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="snapfs-st", dir="/tmp") as d:
        yield Path(d) / "status.sock"


async def test_status_socket_answers_the_same_reports(sock_path: Path) -> None:
    src = source()
    await _cat(src.fs, "aaa/etc/passwd")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, src, sock_path)
        assert sock_path.stat().st_mode & 0o777 == 0o600
        assert await query_status(sock_path) == collect_reports(src)
        nursery.cancel_scope.cancel()
    assert not sock_path.exists()
    with pytest.raises(Unavailable, match="status endpoint"):
        await query_status(sock_path)


async def test_recording_through_the_status_socket(sock_path: Path) -> None:
    src = source()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, src, sock_path)
        recording = await RemoteRecording.start(sock_path, ["aaa"])
        await _cat(src.fs, "aaa/bin/sh")
        await _cat(src.fs, "aaa/etc/passwd")
        assert await recording.stop() == ["bin/sh", "etc/passwd"]
        assert await recording.stop() == ["bin/sh", "etc/passwd"]
        # A client that goes away ends its recording: nothing keeps recording after it.
        gone = await RemoteRecording.start(sock_path, ["aaa"])
        await gone.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert src.fs._recordings.active == []
        nursery.cancel_scope.cancel()


async def test_metrics_export_the_layer_numbers() -> None:
    src = source()
    await _cat(src.fs, "aaa/etc/passwd")
    reports = collect_reports(src)
    metrics = Metrics()
    metrics.track_layers(lambda: reports)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_metrics, metrics, "127.0.0.1:0")
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://{host}:{port}/metrics")).text
        nursery.cancel_scope.cancel()
    for line in ('snapfs_layer_state{layer="aaa",state="fetching"} 1.0',
                 'snapfs_layer_state{layer="aaa",state="local"} 0.0',
                 'snapfs_layer_state{layer="bbb",state="local"} 1.0',
                 'snapfs_layer_size_bytes{layer="aaa"} 1000.0',
                 'snapfs_layer_local_bytes{layer="aaa"} 400.0',
                 'snapfs_fetch_requests_total{layer="aaa"} 3.0',
                 'snapfs_fetch_bytes_total{layer="aaa"} 350.0',
                 'snapfs_cache_hits_total{layer="aaa"} 7.0',
                 'snapfs_fuse_requests_total{layer="aaa",op="read"} 1.0'):
        assert line in text.splitlines(), line


async def test_metrics_name_cache_and_gc_numbers_by_prometheus_conventions() -> None:
    metrics = Metrics()
    metrics.track_disk(lambda: DiskStats(5000, 8192, {"max_size": 3, "min_free": 1},
                                         {"max_size": 3000, "min_free": 500}, 2, 7000))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_metrics, metrics, "127.0.0.1:0")
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://{host}:{port}/metrics")).text
        nursery.cancel_scope.cancel()
    lines = text.splitlines()
    for line in ("snapfs_chunk_cache_size_bytes 5000.0", "snapfs_chunk_cache_limit_bytes 8192.0",
                 'snapfs_chunk_cache_evictions_total{cause="max_size"} 3.0',
                 'snapfs_chunk_cache_evictions_total{cause="min_free"} 1.0',
                 'snapfs_chunk_cache_evicted_bytes_total{cause="max_size"} 3000.0',
                 "snapfs_gc_runs_total 2.0", "snapfs_gc_freed_bytes_total 7000.0",
                 "# TYPE snapfs_chunk_cache_size_bytes gauge",
                 "# TYPE snapfs_chunk_cache_evictions_total counter"):
        assert line in lines, line
    # The standard process metrics, in base units.
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert any(line.startswith("process_cpu_seconds_total ") for line in lines)



async def test_every_family_follows_prometheus_naming() -> None:
    src = source()
    await _cat(src.fs, "aaa/etc/passwd")
    reports = collect_reports(src)
    metrics = Metrics()
    metrics.track_layers(lambda: reports)
    metrics.track_disk(lambda: DiskStats(1, 0, {"max_size": 0}, {"max_size": 0}, 0, 0))
    metrics.observe_rpc("Prepare", "OK", 0.001)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_metrics, metrics, "127.0.0.1:0")
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://{host}:{port}/metrics")).text
        nursery.cancel_scope.cancel()
    types = dict(line.split()[2:4] for line in text.splitlines()
                 if line.startswith("# TYPE snapfs_"))
    assert len(types) >= 15
    for name, kind in types.items():
        # _total exactly on counters; a unit only at the end (before _total).
        assert name.endswith("_total") == (kind == "counter"), name
        base = name.removesuffix("_total")
        assert "bytes" not in base or base.endswith("_bytes"), name
        assert "seconds" not in base or base.endswith("_seconds"), name
        assert not base.endswith("_created"), name  # no per-series creation gauges
