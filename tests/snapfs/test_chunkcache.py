"""The chunk cache: verified before visible, content-addressed, sliced reads."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from content.chunkcache import ChunkCache
from content.digest import digest_bytes
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
