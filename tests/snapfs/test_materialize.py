"""Completing a lazy layer from its blob: the same tree as native extraction, nothing left
behind when a digest does not match; mountinfo parsing; the LMDB record."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from content.digest import Digest, digest_bytes
from content.errors import DigestMismatch
from snapfs.lazy.complete import BlobReader, complete_layer
from snapfs.lazy.in_use import mount_uses
from snapfs.lazy.layerdb import LayerDB, LayerRecord, LocalRecord
from snapfs.lazy.layers import layer_id
from tests.fixtures.realenv import need_root
from tests.snapfs.test_lazy_pull import bottom_entries, native_tree, top_entries, tree
from tests.snapfs.test_lazy_pull import lazy_layer as make_layer

HEX = "ab" * 32


def reader_over(blob: bytes, digest: Digest) -> BlobReader:
    """The blob as the background fetch reads it, in small pieces (here from memory)."""
    return BlobReader(lambda off, n: blob[off:off + n], len(blob), digest, "layer L",
                      piece=64 * 1024)


@pytest.mark.parametrize(("which", "fmt"), [("bottom", "estargz"), ("top", "zstd:chunked")])
async def test_a_complete_layer_materialises_as_native_extraction_does(
        tmp_path: Path, which: str, fmt: str) -> None:
    need_root("mknod, chown and trusted.* xattrs of native extraction")
    entries = bottom_entries("m") if which == "bottom" else top_entries("m")
    layer = make_layer(entries, fmt)
    dest = tmp_path / "layers" / layer_id(layer.digest)
    await trio.to_thread.run_sync(lambda: complete_layer(
        reader_over(layer.blob, layer.digest), dest, diff_id=layer.diff_id, what="L"))
    expected = await native_tree(layer, tmp_path / "native")
    expected.pop("stargz.index.json", None)  # eStargz metadata: the FUSE view hides it too
    assert await trio.to_thread.run_sync(tree, dest) == expected
    assert not (tmp_path / "layers" / f"new-{dest.name}").exists()


@pytest.mark.parametrize("lie", ["diff_id", "blob digest"])
async def test_a_digest_that_does_not_match_leaves_no_directory(
        tmp_path: Path, lie: str) -> None:
    layer = make_layer(bottom_entries("gap"), "estargz")
    wrong = digest_bytes(b"something else")
    dest = tmp_path / "layers" / "x"
    reader = reader_over(layer.blob, wrong if lie == "blob digest" else layer.digest)
    with pytest.raises(DigestMismatch, match=str(wrong)):
        await trio.to_thread.run_sync(lambda: complete_layer(
            reader, dest, diff_id=wrong if lie == "diff_id" else layer.diff_id, what="L",
            userxattr=os.geteuid() != 0))
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
