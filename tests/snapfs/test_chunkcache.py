"""The chunk cache: verified before visible, content-addressed, sliced reads."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from content.chunkbudget import Limits
from content.chunkcache import ChunkCache
from content.digest import Digest, digest_bytes
from content.errors import DigestMismatch


def test_put_then_get_read_and_has(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    data = bytes(range(256)) * 40
    d = digest_bytes(data)
    assert not cache.has(d) and cache.get(d) is None and cache.read(d, 0, 10) is None
    assert cache.put(d, data) is True
    assert cache.has(d)
    assert cache.get(d) == data
    assert cache.read(d, 1000, 300) == data[1000:1300]
    assert cache.read(d, len(data) - 5, 100) == data[-5:]  # short at the chunk's end
    assert cache.path(d) == tmp_path / "chunks" / "sha256" / d.hex


def test_same_chunk_is_stored_once(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    data = b"shared by two layers\n" * 100
    d = digest_bytes(data)
    assert cache.put(d, data) is True
    assert cache.put(d, data) is False
    assert cache.usage().chunks == 1 and cache.usage().bytes == len(data)
    assert cache.chunks_written == 1 and cache.bytes_written == len(data)


def test_put_refuses_bytes_that_do_not_match_and_stores_nothing(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    d = digest_bytes(b"good")
    with pytest.raises(DigestMismatch, match=str(d.short())):
        cache.put(d, b"evil")
    assert not cache.has(d)
    assert cache.usage().chunks == 0
    assert list((tmp_path / "chunks" / "tmp").iterdir()) == []


def test_sweep_temp_removes_leftovers_and_remove_drops_a_chunk(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    (tmp_path / "chunks" / "tmp" / "chunk-crashed").write_bytes(b"half")
    assert cache.sweep_temp() == 1
    d = digest_bytes(b"x")
    cache.put(d, b"x")
    assert cache.remove(d) is True and cache.remove(d) is False
    assert cache.get(d) is None


def test_reads_stay_correct_across_eviction_and_threads(tmp_path: Path) -> None:
    # Few open files for many chunks and many threads: an fd closed under a reader and
    # reused by another open would return another chunk's bytes.
    cache = ChunkCache(tmp_path / "chunks", open_files=3)
    rnd = random.Random(3)
    chunks = [rnd.randbytes(rnd.randrange(1, 50_000)) for _ in range(24)]
    digests = [digest_bytes(c) for c in chunks]
    for d, c in zip(digests, chunks, strict=True):
        cache.put(d, c, verified=True)
    wrong: list[str] = []

    def reader(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(300):
            i = r.randrange(len(chunks))
            off = r.randrange(len(chunks[i]))
            n = r.randrange(1, 70_000)
            if cache.read(digests[i], off, n) != chunks[i][off:off + n]:
                wrong.append(f"chunk {i} at {off}+{n}")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    cache.close()
    assert cache.read(digests[0], 0, 10) == chunks[0][:10]  # reopens after close


def test_removed_chunk_is_not_served_from_an_open_file(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    d = digest_bytes(b"held open")
    cache.put(d, b"held open")
    assert cache.read(d, 0, 4) == b"held"  # now open
    assert cache.advise(d) is True
    assert cache.remove(d) is True
    assert cache.read(d, 0, 4) is None and cache.advise(d) is False and not cache.has(d)


def _chunk(i: int, size: int = 1000) -> tuple[bytes, Digest]:
    data = bytes([i % 256]) * size
    return data, digest_bytes(data)


def _held(cache: ChunkCache) -> int:
    return sum(p.stat().st_size for p in (cache.root / "sha256").iterdir())


def test_a_bounded_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", limits=Limits(max_bytes=3000))
    chunks = [_chunk(i) for i in range(5)]
    for data, d in chunks[:3]:
        assert cache.put(d, data)
    assert cache.read(chunks[0][1], 0, 10) == chunks[0][0][:10]
    cache.put(chunks[3][1], chunks[3][0])
    # The oldest unread chunk (1) went; the one just read (0) stayed.
    assert not cache.has(chunks[1][1]) and cache.has(chunks[0][1])
    assert _held(cache) <= 3000
    cache.put(chunks[4][1], chunks[4][0])
    assert [cache.has(d) for _, d in chunks] == [True, False, False, True, True]
    assert cache.drain_evicted() == [chunks[1][1], chunks[2][1]]
    assert cache.drain_evicted() == []
    ev = cache.evictions()
    assert (ev.chunks, ev.bytes) == ({"max_size": 2, "min_free": 0},
                                     {"max_size": 2000, "min_free": 0})
    assert cache.used_bytes() == _held(cache) == 3000


def test_a_bounded_cache_learns_what_an_earlier_process_left(tmp_path: Path) -> None:
    first = ChunkCache(tmp_path / "chunks")
    for i in range(4):
        data, d = _chunk(i)
        first.put(d, data)
    cache = ChunkCache(tmp_path / "chunks", limits=Limits(max_bytes=2500))
    data, d = _chunk(9)
    cache.put(d, data)
    assert _held(cache) <= 2500 and cache.has(d)
    assert cache.evictions().total == 3


def test_min_free_evicts_for_the_filesystem(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks")
    for i in range(3):
        data, d = _chunk(i)
        cache.put(d, data)
    # A floor above what is free: everything that can go, goes (counted as min_free).
    bounded = ChunkCache(tmp_path / "chunks", limits=Limits(min_free=1 << 62))
    data, d = _chunk(7)
    bounded.put(d, data)
    ev = bounded.evictions()
    assert ev.chunks["min_free"] == 3 and ev.chunks["max_size"] == 0
    assert [p.name for p in (cache.root / "sha256").iterdir()] == [d.hex]
