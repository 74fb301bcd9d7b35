"""Remote layers without a mount: labels, format detection, errors, records and restore."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from content.chunkcache import ChunkCache
from content.compression import compress
from content.digest import Digest, digest_bytes, parse_digest
from content.errors import InvalidArgument, NotFound, Unavailable
from content.estargz import build_estargz
from content.reference import Reference
from content.tarlayer import Entry, build_tar
from snapfs.fuse import LayerFS
from snapfs.lazy.layerdb import LayerDB
from snapfs.lazy.layers import LazyLayers, layer_id, layer_source
from snapfs.snapshot.metastore import MetaStore
from tests.snapfs.test_fetcher import MemSource, files

REF = "127.0.0.1:5000/test/img:1"


def labels(digest: Digest, stargz: bool = False) -> dict[str, str]:
    if stargz:
        return {"containerd.io/snapshot/remote/stargz.reference": REF,
                "containerd.io/snapshot/remote/stargz.digest": str(digest),
                "containerd.io/snapshot.ref": "sha256:" + "1" * 64}
    return {"containerd.io/snapshot/cri.image-ref": REF,
            "containerd.io/snapshot/cri.layer-digest": str(digest),
            "containerd.io/snapshot.ref": "sha256:" + "1" * 64}


def estargz_blob(entries: list[Entry] | None = None) -> bytes:
    built = build_estargz(io.BytesIO(build_tar(entries or files())), chunk_size=16 * 1024)
    assert built.blob is not None
    return built.blob


def open_lazy(tmp_path: Path, source: MemSource, timeout: float = 30.0) -> LazyLayers:
    db = LayerDB.open(tmp_path)
    # The in-memory registry holds no manifests, so nothing vouches for a TOC: "warn" mounts
    # such layers anyway (the chain of trust is tested against a real registry, test_trust).
    return LazyLayers(source, LayerFS(tmp_path / "fuse"), db, ChunkCache(tmp_path / "chunks"),
                      timeout=timeout, toc_policy="warn")


async def prepare(lazy: LazyLayers, key: str, parent: str,
                  labels: dict[str, str]) -> str | None:
    """``prepare_remote``, then the layer's record as the snapshotter writes it in the
    snapshot's transaction; the layer's directory."""
    layer = await lazy.prepare_remote(key, parent, labels)
    if layer is None:
        return None
    if layer.record is not None:  # in a transaction of its own, as no snapshotter runs here
        MetaStore(lazy.db.metadata).with_transaction(True, layer.record)
    return layer.lower


def test_layer_source_reads_either_label_set() -> None:
    d = digest_bytes(b"x")
    for stargz in (False, True):
        ref, digest = layer_source(labels(d, stargz)) or (None, None)
        assert str(ref) == REF and digest == d
    assert layer_source({"containerd.io/snapshot.ref": "x"}) is None
    assert layer_source({"containerd.io/snapshot/cri.image-ref": REF,
                         "containerd.io/snapshot/cri.layer-digest": "md5:zz"}) is None


async def test_an_estargz_layer_is_recorded_and_mounted(tmp_path: Path) -> None:
    blob = estargz_blob()
    d = digest_bytes(blob)
    source = MemSource({d: blob})
    lazy = open_lazy(tmp_path, source)
    path = await prepare(lazy, "k", "", labels(d))
    assert path == str(tmp_path / "fuse" / layer_id(d))
    assert lazy.fs.layer_ids() == [layer_id(d)]
    rec = lazy.db.get(d)
    assert rec is not None and rec.format == "estargz" and rec.size == len(blob)
    # Index: the whole small layer's tail came in one Range request.
    assert len(source.requests) == 1
    # The same layer again (another image, another chain): no network at all.
    assert await prepare(lazy, "k2", "p", labels(d, stargz=True)) == path
    assert len(source.requests) == 1
    assert await lazy.fetcher(d).read("etc/hostname", 0, 100) == b"snapfs\n"
    lazy.db.close()


async def test_plain_layers_and_missing_labels_go_native(tmp_path: Path) -> None:
    plain = compress(build_tar(files()), "gzip")
    d = digest_bytes(plain)
    lazy = open_lazy(tmp_path, MemSource({d: plain}))
    assert await prepare(lazy, "k", "", labels(d)) is None
    assert await prepare(lazy, "k", "", {"containerd.io/snapshot.ref": "x"}) is None
    assert lazy.db.all() == [] and lazy.fs.layer_ids() == []
    lazy.db.close()


async def test_a_blob_this_daemon_cannot_see_goes_native(tmp_path: Path) -> None:
    class Missing(MemSource):
        async def blob_size(self, ref: Reference, digest: Digest) -> int:
            raise NotFound(f"blob {digest} not found")

    lazy = open_lazy(tmp_path, Missing({}))
    assert await prepare(lazy, "k", "", labels(digest_bytes(b"?"))) is None
    lazy.db.close()


async def test_a_malformed_toc_fails_the_prepare_naming_the_layer(tmp_path: Path) -> None:
    blob = bytearray(estargz_blob())
    # The footer still says eStargz; the TOC member before it is garbage.
    toc_at = int(bytes(blob[-51 + 16:-51 + 32]), 16)
    blob[toc_at + 20:toc_at + 40] = b"\x00" * 20
    d = digest_bytes(bytes(blob))
    lazy = open_lazy(tmp_path, MemSource({d: bytes(blob)}))
    with pytest.raises(InvalidArgument, match=d.short()):
        await prepare(lazy, "k", "", labels(d))
    assert lazy.db.all() == []
    lazy.db.close()


async def test_a_stalled_registry_answers_unavailable(tmp_path: Path) -> None:
    blob = estargz_blob()
    d = digest_bytes(blob)
    source = MemSource({d: blob})
    source.gate = trio.Event()  # never set: the registry never answers
    lazy = open_lazy(tmp_path, source, timeout=1.0)
    with pytest.raises(Unavailable, match="did not answer"):
        await prepare(lazy, "k", "", labels(d))
    lazy.db.close()


async def test_restore_reindexes_recorded_layers_without_the_network(tmp_path: Path) -> None:
    blob = estargz_blob()
    d = digest_bytes(blob)
    first = open_lazy(tmp_path, MemSource({d: blob}))
    path = await prepare(first, "k", "", labels(d))
    first.db.close()

    offline = MemSource({})  # any request would fail with KeyError
    again = open_lazy(tmp_path, offline)
    assert await again.restore() == 1
    assert again.fs.layer_ids() == [layer_id(d)]
    assert str(again.fs.mountpoint / layer_id(d)) == path
    assert offline.requests == []
    again.db.close()


async def test_restore_skips_a_damaged_record_and_keeps_the_others(tmp_path: Path) -> None:
    good, bad = estargz_blob(), estargz_blob([Entry("only", data=b"one\n")])
    dg, db_ = digest_bytes(good), digest_bytes(bad)
    lazy = open_lazy(tmp_path, MemSource({dg: good, db_: bad}))
    await prepare(lazy, "a", "", labels(dg))
    await prepare(lazy, "b", "", labels(db_))
    rec = lazy.db.get(db_)
    assert rec is not None
    lazy.db.put(rec, {0: b"junk"})  # its recorded ranges are gone
    lazy.db.close()
    again = open_lazy(tmp_path, MemSource({}))
    assert await again.restore() == 1
    assert again.fs.layer_ids() == [layer_id(dg)]
    again.db.close()


def test_layer_id_is_the_digest_hex() -> None:
    d = parse_digest("sha256:" + "ab" * 32)
    assert layer_id(d) == "ab" * 32
