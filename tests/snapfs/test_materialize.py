"""Materialising a lazy layer from the chunk cache: the same tree as native extraction, no
network, nothing half-built on a missing chunk; mountinfo parsing; the LMDB record."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from content.chunkcache import ChunkCache
from content.errors import FailedPrecondition
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.in_use import mount_uses
from snapfs.lazy.layerdb import LayerDB, LayerRecord, LocalRecord
from snapfs.lazy.layers import layer_id
from snapfs.lazy.materialize import materialize_layer
from tests.fixtures.realenv import need_root
from tests.snapfs.test_fetcher import REF, MemSource, lazy
from tests.snapfs.test_lazy_pull import bottom_entries, native_tree, top_entries, tree
from tests.snapfs.test_lazy_pull import lazy_layer as make_layer

HEX = "ab" * 32


@pytest.mark.parametrize(("which", "fmt"), [("bottom", "estargz"), ("top", "zstd:chunked")])
async def test_a_cached_layer_materialises_as_native_extraction_does(
        tmp_path: Path, which: str, fmt: str) -> None:
    need_root("mknod, chown and trusted.* xattrs of native extraction")
    entries = bottom_entries("m") if which == "bottom" else top_entries("m")
    layer = make_layer(entries, fmt)
    blob, digest, lazy_layer = await lazy(entries, fmt)
    # (the same entries, chunked differently: the same files)
    cache = ChunkCache(tmp_path / "chunks")
    source = MemSource({digest: blob})
    fetcher = LayerFetcher(source, REF, digest, lazy_layer, cache)
    await fetcher.fetch_all()
    fetched = len(source.requests)
    dest = tmp_path / "layers" / layer_id(digest)
    await trio.to_thread.run_sync(lambda: materialize_layer(lazy_layer, cache, dest))
    assert len(source.requests) == fetched  # from the cache only
    expected = await native_tree(layer, tmp_path / "native")
    assert await trio.to_thread.run_sync(tree, dest) == expected
    assert not (tmp_path / "layers" / f"new-{dest.name}").exists()


async def test_a_missing_chunk_leaves_no_directory(tmp_path: Path) -> None:
    entries = bottom_entries("gap")
    blob, digest, lazy_layer = await lazy(entries)
    cache = ChunkCache(tmp_path / "chunks")
    fetcher = LayerFetcher(MemSource({digest: blob}), REF, digest, lazy_layer, cache)
    await fetcher.fetch_all()
    cache.remove(lazy_layer.files["usr/lib/big.so"][3].digest)
    dest = tmp_path / "layers" / "x"
    with pytest.raises(FailedPrecondition, match=r"usr/lib/big\.so"):
        await trio.to_thread.run_sync(lambda: materialize_layer(lazy_layer, cache, dest))
    assert list((tmp_path / "layers").iterdir()) == []


def test_mount_uses_finds_overlays_and_binds() -> None:
    fuse = Path(f"/r/fuse/{HEX}")
    local = Path(f"/r/layers/{HEX}")
    overlay = ("120 30 0:99 / /m rw,relatime shared:1 - overlay overlay "
               "rw,lowerdir={},upperdir=/r/s/1/fs,workdir=/r/s/1/work")
    assert mount_uses(overlay.format(f"/r/layers/x:{fuse}"), fuse)
    assert mount_uses(overlay.format(f"fuse/{HEX}:layers/y"), fuse)  # relative (long options)
    assert not mount_uses(overlay.format("/r/layers/x"), fuse)
    assert mount_uses(overlay.format(f"{local}"), local)
    bind_fuse = f"121 30 0:55 /{HEX} /v ro - fuse.snapfs snapfs ro,user_id=0"
    assert mount_uses(bind_fuse, fuse, HEX)
    assert not mount_uses(bind_fuse.replace(HEX, "cd" * 32), fuse, HEX)
    bind_local = f"122 30 8:1 /work/r/layers/{HEX} /v2 ro - ext4 /dev/sda1 rw"
    assert mount_uses(bind_local, local)
    assert not mount_uses("garbage", local)


def test_local_records_round_trip_and_go_with_the_layer(tmp_path: Path) -> None:
    from content.digest import digest_bytes

    db = LayerDB.open(tmp_path)
    try:
        d = digest_bytes(b"blob")
        assert db.local(d) is None
        with pytest.raises(Exception, match="not recorded"):
            db.set_local(LocalRecord(d, "x", 1))
        db.put(LayerRecord(d, "r", 1, "estargz", digest_bytes(b"toc")), {0: b"t"})
        rec = db.set_local(LocalRecord(d, layer_id(d), 1234))
        assert db.local(d) == rec and rec.created_ns > 0
        assert db.remove(d)
        assert db.local(d) is None
    finally:
        db.close()
