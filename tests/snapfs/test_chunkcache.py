"""The chunk cache: verified before visible, content-addressed, sliced reads."""

from __future__ import annotations

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
