"""LayerFetcher against an in-memory blob: merged requests, shared fetches, cache, corruption."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import trio

from content.chunkcache import ChunkCache
from content.descriptor import Descriptor
from content.digest import Digest, digest_bytes
from content.errors import DigestMismatch, NotFound
from content.estargz import build_estargz
from content.lazyformat import Chunk, LazyLayer, load_lazy_layer
from content.reference import Reference, parse_reference
from content.tarlayer import Entry, build_tar
from content.zstdchunked import build_zstd_chunked
from snapfs.lazy.fetcher import LayerFetcher, overlapping, plan_spans

CHUNK = 16 * 1024
BIG = random.Random(7).randbytes(5 * CHUNK + 333)
REF = parse_reference("127.0.0.1:5000/test/img:1")


class MemSource:
    """A registry holding blobs in memory; counts Range requests, can stall them."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self.blobs = blobs
        self.requests: list[tuple[int, int]] = []
        self.gate: trio.Event | None = None

    async def fetch_range(self, ref: Reference, digest: Digest, offset: int,
                          length: int) -> bytes:
        self.requests.append((offset, length))
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        return self.blobs[digest][offset:offset + length]

    async def blob_size(self, ref: Reference, digest: Digest) -> int:
        return len(self.blobs[digest])

    async def fetch_manifest(self, ref: Reference, obj: str) -> tuple[Descriptor, bytes]:
        raise NotFound(f"manifest {obj}: this in-memory registry holds blobs only")

    async def fetch_blob(self, ref: Reference, desc: Descriptor) -> bytes:
        return self.blobs[desc.digest]


def files(extra: dict[str, bytes] | None = None) -> list[Entry]:
    out = [Entry("etc", "dir"), Entry("etc/hostname", data=b"snapfs\n"),
           Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
           Entry("usr/lib/big.so", data=BIG), Entry("empty", data=b"")]
    out += [Entry(k, data=v) for k, v in (extra or {}).items()]
    return out


async def lazy(entries: list[Entry], fmt: str = "estargz") -> tuple[bytes, Digest, LazyLayer]:
    tar = io.BytesIO(build_tar(entries))
    built = (build_estargz(tar, chunk_size=CHUNK) if fmt == "estargz"
             else build_zstd_chunked(tar, chunk_size=CHUNK))
    assert built.blob is not None
    blob = built.blob

    async def read(o: int, n: int) -> bytes:
        return blob[o:o + n]

    layer = await load_lazy_layer(read, len(blob), what="test layer")
    assert layer is not None
    return blob, built.blob_digest, layer


async def fetcher_for(tmp_path: Path, entries: list[Entry], fmt: str = "estargz",
                      cache: ChunkCache | None = None, window: int = 0,
                      ) -> tuple[LayerFetcher, MemSource]:
    """A fetcher of ``entries`` as one layer; the locality window off unless asked for (these
    layers are smaller than one window: it would fetch them whole)."""
    blob, digest, layer = await lazy(entries, fmt)
    source = MemSource({digest: blob})
    cache = cache or ChunkCache(tmp_path / "chunks")
    return LayerFetcher(source, REF, digest, layer, cache, window=window), source


@pytest.mark.parametrize("fmt", ["estargz", "zstd:chunked"])
async def test_reads_return_file_bytes_at_any_offset(tmp_path: Path, fmt: str) -> None:
    f, _ = await fetcher_for(tmp_path, files(), fmt)
    assert await f.read("etc/hostname", 0, 100) == b"snapfs\n"
    assert await f.read("usr/lib/big.so", 0, len(BIG)) == BIG
    for off, n in [(1, 10), (CHUNK - 3, 7), (2 * CHUNK, CHUNK), (len(BIG) - 5, 5)]:
        assert await f.read("usr/lib/big.so", off, n) == BIG[off:off + n]
    assert await f.read("empty", 0, 10) == b""


async def test_a_multi_chunk_file_costs_one_request_and_then_none(tmp_path: Path) -> None:
    f, source = await fetcher_for(tmp_path, files())
    assert len(f.layer.files["usr/lib/big.so"]) == 6
    assert await f.read("usr/lib/big.so", 0, len(BIG)) == BIG
    assert len(source.requests) == 1
    assert f.stats.chunks_fetched == 6 and f.stats.requests == 1
    assert await f.read("usr/lib/big.so", 100, 3 * CHUNK) == BIG[100:100 + 3 * CHUNK]
    assert len(source.requests) == 1  # served from the cache
    assert f.stats.cache_hits >= 4


async def test_reading_one_small_file_fetches_a_small_part_of_the_layer(tmp_path: Path) -> None:
    f, source = await fetcher_for(tmp_path, files())
    await f.read("etc/passwd", 0, 4096)
    fetched = sum(n for _, n in source.requests)
    assert fetched < len(source.blobs[f.blob]) // 10
    assert f.stats.bytes_fetched == fetched


async def test_concurrent_readers_share_one_fetch_per_chunk(tmp_path: Path) -> None:
    f, source = await fetcher_for(tmp_path, files())
    source.gate = trio.Event()
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await f.read("usr/lib/big.so", CHUNK, CHUNK))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    assert results == [BIG[CHUNK:2 * CHUNK]] * 5
    assert len(source.requests) == 1
    assert f.stats.chunks_fetched == 1


async def test_a_file_in_two_layers_is_fetched_once(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    shared = random.Random(3).randbytes(3 * CHUNK)
    a, sa = await fetcher_for(tmp_path, files({"opt/shared.bin": shared}), cache=cache)
    b, sb = await fetcher_for(tmp_path, [Entry("x", data=b"other\n"),
                                         Entry("opt/shared.bin", data=shared)], cache=cache)
    assert a.blob != b.blob
    assert await a.read("opt/shared.bin", 0, len(shared)) == shared
    assert await b.read("opt/shared.bin", 0, len(shared)) == shared
    assert sa.requests and sb.requests == []
    assert b.stats.cache_hits == 3 and b.stats.bytes_fetched == 0


async def test_a_corrupted_chunk_is_never_served_and_others_still_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f, source = await fetcher_for(tmp_path, files())
    chunk = f.layer.files["usr/lib/big.so"][2]
    blob = bytearray(source.blobs[f.blob])
    blob[chunk.blob_offset + chunk.blob_length // 2] ^= 0xFF
    source.blobs[f.blob] = bytes(blob)
    with pytest.raises(DigestMismatch):
        await f.read("usr/lib/big.so", chunk.file_offset, 10)
    with pytest.raises(DigestMismatch):  # again: nothing bad was cached
        await f.read("usr/lib/big.so", chunk.file_offset + 5, 10)
    assert not f.cache.has(chunk.digest)
    assert f.stats.verify_failures == 2
    logged = caplog.text
    assert "usr/lib/big.so" in logged and str(chunk.blob_offset) in logged
    assert str(chunk.digest) in logged
    assert await f.read("etc/passwd", 0, 100) == b"root:x:0:0::/root:/bin/sh\n"
    assert await f.read("usr/lib/big.so", 0, CHUNK) == BIG[:CHUNK]


def _chunk(off: int, length: int) -> Chunk:
    return Chunk("f", off, length, off, length, digest_bytes(str(off).encode()))


def test_plan_spans_merges_neighbours_up_to_the_cap() -> None:
    chunks = [_chunk(0, 10), _chunk(10, 10), _chunk(20, 10), _chunk(50, 10), _chunk(60, 100)]
    groups = plan_spans(chunks, max_span=40)
    assert [[c.blob_offset for c in g] for g in groups] == [[0, 10, 20], [50], [60]]
    assert [[c.blob_offset for c in g] for g in plan_spans(chunks, max_span=40, max_gap=20)] \
        == [[0, 10, 20], [50], [60]]
    assert len(plan_spans(reversed(chunks), max_span=1000, max_gap=20)) == 1


def test_overlapping_picks_the_chunks_a_range_touches() -> None:
    chunks = [Chunk("f", i * 10, 10, 100 + i * 10, 10, digest_bytes(bytes([i])))
              for i in range(5)]
    assert [c.file_offset for c in overlapping(chunks, 15, 10)] == [10, 20]
    assert [c.file_offset for c in overlapping(chunks, 0, 50)] == [0, 10, 20, 30, 40]
    assert [c.file_offset for c in overlapping(chunks, 49, 1)] == [40]
    assert overlapping(chunks, 20, 0) == []


class AdvisedCache(ChunkCache):
    """Records which chunks a reader asked to warm ahead of time."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.advised: list[Digest] = []

    def advise(self, digest: Digest) -> bool:
        self.advised.append(digest)
        return super().advise(digest)


async def test_sequential_cached_reads_warm_the_next_chunk(tmp_path: Path) -> None:
    cache = AdvisedCache(tmp_path / "chunks")
    f, source = await fetcher_for(tmp_path, files(), cache=cache)
    assert await f.read("usr/lib/big.so", 0, len(BIG)) == BIG  # fetch: nothing to warm yet
    chunks = f.layer.files["usr/lib/big.so"]
    cache.advised.clear()
    requests = len(source.requests)
    got = b"".join([await f.read("usr/lib/big.so", off, CHUNK)
                    for off in range(0, len(BIG), CHUNK)])
    assert got == BIG and len(source.requests) == requests
    # Reading chunk i asks the cache for chunk i+1; the last chunk has no successor.
    assert cache.advised == [c.digest for c in chunks[1:]]


def modules(n: int, size: int = 3000) -> dict[str, bytes]:
    """``n`` small files stored one after another, like a package's modules."""
    rng = random.Random(n)
    return {f"lib/mod{i:03d}.py": rng.randbytes(size) for i in range(n)}


async def test_a_miss_brings_its_neighbours_in_the_same_request(tmp_path: Path) -> None:
    mods = modules(40)
    f, source = await fetcher_for(tmp_path, files(mods), window=8 * 3100)
    assert await f.read("lib/mod000.py", 0, 3000) == mods["lib/mod000.py"]
    assert len(source.requests) == 1
    brought = f.stats.window_chunks
    assert 4 <= brought < 40  # a window's worth, not the layer
    for i in range(1, brought + 1):  # the neighbours a package import reads next
        name = f"lib/mod{i:03d}.py"
        assert await f.read(name, 0, 3000) == mods[name]
    assert len(source.requests) == 1 and f.stats.window_hits == brought
    # Every neighbour was read: the next miss's window is larger.
    window = f.locality.window
    assert await f.read(f"lib/mod{brought + 1:03d}.py", 0, 3000)
    assert f.locality.window == 2 * window and len(source.requests) == 2


async def test_a_window_nobody_reads_shrinks(tmp_path: Path) -> None:
    mods = modules(200)
    f, source = await fetcher_for(tmp_path, files(mods), window=256 << 10)
    start = f.locality.window
    for i in (0, 100, 199):  # far apart: the neighbours are never read
        assert await f.read(f"lib/mod{i:03d}.py", 0, 10) == mods[f"lib/mod{i:03d}.py"][:10]
    assert f.locality.window == start // 4
    assert f.stats.window_hits == 0 and len(source.requests) == 3


async def test_a_window_never_refetches_what_is_cached_or_in_flight(tmp_path: Path) -> None:
    mods = modules(20)
    f, source = await fetcher_for(tmp_path, files(mods), window=1 << 20)
    assert await f.read("lib/mod005.py", 0, 3000) == mods["lib/mod005.py"]
    assert await f.read("lib/mod000.py", 0, 3000) == mods["lib/mod000.py"]
    # The second window stopped where the first request began: no byte fetched twice.
    (first_off, _), (off, length) = source.requests
    assert off + length <= first_off
    for name, data in mods.items():
        assert await f.read(name, 0, 3000) == data  # and whatever it brought verifies


async def test_window_counts_add_to_the_counters_a_restart_seeded(tmp_path: Path) -> None:
    mods = modules(40)
    f, _ = await fetcher_for(tmp_path, files(mods), window=8 * 3100)
    f.stats.window_chunks, f.stats.window_hits = 7, 3  # as snapfs.lazy.counters.seed does
    assert await f.read("lib/mod000.py", 0, 3000) == mods["lib/mod000.py"]
    assert await f.read("lib/mod001.py", 0, 3000) == mods["lib/mod001.py"]
    assert f.stats.window_chunks > 7 and f.stats.window_hits == 4  # counted on, not reset


def package(n: int, size: int = 3000, where: str = "lib/pkg") -> dict[str, bytes]:
    rng = random.Random(where)
    return {f"{where}/m{i:03d}.py": rng.randbytes(size) for i in range(n)}


async def test_a_second_miss_in_a_directory_fetches_the_rest_of_it_aside(
        tmp_path: Path) -> None:
    mods = package(40)
    other = package(10, where="lib/other")
    order = sorted(mods, key=lambda p: random.Random(3).random())  # imports: not tar order
    async with trio.open_nursery() as nursery:
        blob, digest, layer = await lazy(files({**mods, **other}))
        source = MemSource({digest: blob})
        f = LayerFetcher(source, REF, digest, layer, ChunkCache(tmp_path / "chunks"),
                         window=3100, nursery=nursery)
        for name in order:
            assert await f.read(name, 0, 3000) == mods[name]
        # Two misses, then the directory aside (a span or three around what was fetched):
        # far fewer requests than files, and nothing of the other directory.
        assert len(source.requests) <= 5 < len(mods)
        ends = [(o, o + n) for o, n in source.requests]
        for name, chunks in layer.files.items():
            if name.startswith("lib/other/"):
                assert not any(lo <= c.blob_offset < hi for c in chunks for lo, hi in ends)
        assert f.stats.window_hits >= len(mods) - 3
        assert f.stats.demand_requests == len(source.requests)  # caused by reads


async def test_one_miss_or_a_big_directory_takes_no_directory(tmp_path: Path) -> None:
    mods = package(40)
    async with trio.open_nursery() as nursery:
        blob, digest, layer = await lazy(files(mods))
        source = MemSource({digest: blob})
        f = LayerFetcher(source, REF, digest, layer, ChunkCache(tmp_path / "chunks"),
                         window=3100, nursery=nursery)
        assert await f.read("lib/pkg/m020.py", 0, 10)
        assert len(source.requests) == 1  # one miss: the file (and its window) only
        f.locality.dir_budget = 10 * 3000  # now the directory costs more than it may
        assert await f.read("lib/pkg/m030.py", 0, 10)
        await trio.testing.wait_all_tasks_blocked()
        assert len(source.requests) == 2
        assert await f.read("lib/pkg/m005.py", 0, 10)
        assert len(source.requests) == 3  # taken once, or never: still a request per miss
