"""Both lazy formats, end to end: build a layer, detect it from its footer, index and read it."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import zstandard

from content.digest import digest_bytes, parse_digest
from content.errors import DigestMismatch, InvalidArgument
from content.estargz import BuildResult, build_estargz
from content.lazyformat import (
    FOOTER_PROBE,
    LazyLayer,
    decode_chunk,
    load_lazy_layer,
    parse_footer,
    prefetch_set,
)
from content.zstdchunked import build_zstd_chunked

CHUNK = 64 * 1024
BIG = bytes((i * 7 + i // 1000) % 251 for i in range(3 * CHUNK + 1234))
SMALL = {"etc/hostname": b"snapfs\n", "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
         "usr/bin/tool": b"#!/bin/sh\necho hi\n"}


@dataclass
class Entry:
    type: bytes
    data: bytes = b""
    link: str = ""
    xattrs: dict[str, str] | None = None


def sample_entries() -> dict[str, Entry]:
    e: dict[str, Entry] = {
        "etc": Entry(tarfile.DIRTYPE), "usr": Entry(tarfile.DIRTYPE),
        "usr/bin": Entry(tarfile.DIRTYPE), "var": Entry(tarfile.DIRTYPE),
    }
    e.update({k: Entry(tarfile.REGTYPE, v) for k, v in SMALL.items()})
    e["usr/lib/big.so"] = Entry(tarfile.REGTYPE, BIG)
    e["usr/lib/exact"] = Entry(tarfile.REGTYPE, bytes(range(256)) * (CHUNK // 256))
    e["etc/empty"] = Entry(tarfile.REGTYPE)
    e["etc/attr"] = Entry(tarfile.REGTYPE, b"x", xattrs={"user.test": "v\u00e9",
                                                       "security.capability": "\x01\x02"})
    e["bin"] = Entry(tarfile.SYMTYPE, link="usr/bin")
    e["usr/bin/tool2"] = Entry(tarfile.LNKTYPE, link="usr/bin/tool")
    e["dev-null"] = Entry(tarfile.CHRTYPE)
    e["var/fifo"] = Entry(tarfile.FIFOTYPE)
    e["var/.wh.gone"] = Entry(tarfile.REGTYPE)
    e["var/.wh..wh..opq"] = Entry(tarfile.REGTYPE)
    return e


def sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, ent in sample_entries().items():
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = ent.type, len(ent.data), ent.link
            info.mode, info.uid, info.gid, info.mtime = 0o750, 1000, 1001, 1_700_000_000
            info.uname, info.gname = "alice", "staff"
            if ent.type == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            if ent.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in ent.xattrs.items()}
            tf.addfile(info, io.BytesIO(ent.data) if ent.data else None)
    return buf.getvalue()


Builder = Callable[..., BuildResult]
BUILDERS = [pytest.param(build_estargz, id="estargz"),
            pytest.param(build_zstd_chunked, id="zstd-chunked")]


class Blob:
    """An in-memory blob with a range reader that records the requests made."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    async def read(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset:offset + length]


def build(builder: Builder, **kw: object) -> BuildResult:
    return builder(io.BytesIO(sample_tar()), chunk_size=CHUNK, level=3, **kw)


async def load(data: bytes, **kw: object) -> LazyLayer:
    layer = await load_lazy_layer(Blob(data).read, len(data), what="layer L", **kw)  # type: ignore[arg-type]
    assert layer is not None
    return layer


def read_file(layer: LazyLayer, blob: bytes, path: str) -> bytes:
    return b"".join(decode_chunk(layer, c, blob[c.blob_offset:c.blob_offset + c.blob_length])
                    for c in layer.files[path])


def uncompressed(builder: Builder, blob: bytes) -> bytes:
    if builder is build_estargz:
        return gzip.decompress(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return reader.read()


@pytest.mark.parametrize("builder", BUILDERS)
async def test_round_trip_every_file_reads_back_verified(builder: Builder) -> None:
    res = build(builder)
    assert res.blob is not None
    blob = Blob(res.blob)
    layer = await load_lazy_layer(blob.read, len(res.blob), what="L", toc_digest=res.toc_digest)
    assert layer is not None
    assert len(blob.calls) == 2  # footer, then TOC
    assert layer.toc_digest == res.toc_digest
    expected = sample_entries()
    for name, ent in expected.items():
        if ent.type == tarfile.REGTYPE:
            assert read_file(layer, res.blob, name) == ent.data, name
    assert read_file(layer, res.blob, "usr/bin/tool2") == SMALL["usr/bin/tool"]
    assert [c.size for c in layer.files["usr/lib/big.so"]] == [CHUNK, CHUNK, CHUNK, 1234]
    assert layer.files["etc/empty"] == []
    by_name = {e.name: e for e in layer.toc.entries if e.type != "chunk"}
    assert by_name["dev-null"].type == "char"
    assert (by_name["dev-null"].devmajor, by_name["dev-null"].devminor) == (1, 3)
    assert by_name["var/fifo"].type == "fifo"
    assert by_name["bin"].type == "symlink" and by_name["bin"].linkname == "usr/bin"
    assert by_name["usr/bin/tool2"].linkname == "usr/bin/tool"
    assert by_name["etc/attr"].xattrs == {"user.test": "v\u00e9".encode(),
                                          "security.capability": b"\x01\x02"}
    big = by_name["usr/lib/big.so"]
    assert big.digest == digest_bytes(BIG)
    assert (big.mode, big.uid, big.gid, big.mtime_ns) == (0o750, 1000, 1001, 1_700_000_000 * 10**9)
    assert by_name["var/.wh..wh..opq"].type == "reg"


@pytest.mark.parametrize("builder", BUILDERS)
def test_blob_is_an_ordinary_compressed_tar(builder: Builder) -> None:
    res = build(builder)
    assert res.blob is not None
    raw = uncompressed(builder, res.blob)
    assert res.diff_id == digest_bytes(raw)
    assert res.uncompressed_size == len(raw)
    assert res.blob_digest == digest_bytes(res.blob) and res.blob_size == len(res.blob)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        names = tf.getnames()
        for name, ent in sample_entries().items():
            assert name in names
            if ent.type == tarfile.REGTYPE:
                f = tf.extractfile(name)
                assert f is not None and f.read() == ent.data
        assert tf.getmember("etc/attr").pax_headers["SCHILY.xattr.user.test"] == "v\u00e9"


@pytest.mark.parametrize("builder", BUILDERS)
async def test_prefetch_landmark_lists_prioritized_files(builder: Builder) -> None:
    res = build(builder, prioritized=["usr/bin/tool", "etc/hostname"])
    assert res.blob is not None
    layer = await load(res.blob)
    assert prefetch_set(layer) == ["usr/bin/tool", "etc/hostname"]
    names = [e.name for e in layer.toc.entries if e.type != "chunk"]
    # parents precede their children so the prefetched part is a usable tree
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/tool")


async def test_no_prefetch_landmark() -> None:
    res = build(build_estargz)
    assert res.blob is not None
    assert prefetch_set(await load(res.blob)) == []
    res = build(build_zstd_chunked)
    assert res.blob is not None
    assert prefetch_set(await load(res.blob)) is None


@pytest.mark.parametrize("builder", BUILDERS)
async def test_toc_digest_mismatch_is_refused(builder: Builder) -> None:
    res = build(builder)
    assert res.blob is not None
    wrong = digest_bytes(b"something else")
    with pytest.raises(DigestMismatch, match=r"layer L: .*TOC.*expected " + str(wrong)):
        await load(res.blob, toc_digest=wrong)


@pytest.mark.parametrize("builder", BUILDERS)
async def test_flipped_byte_in_a_chunk_names_file_and_offset(builder: Builder) -> None:
    res = build(builder)
    assert res.blob is not None
    layer = await load(res.blob)
    chunk = layer.files["usr/lib/big.so"][1]
    span = bytearray(res.blob[chunk.blob_offset:chunk.blob_offset + chunk.blob_length])
    span[len(span) // 2] ^= 0x55
    with pytest.raises(DigestMismatch, match=r"usr/lib/big.so at offset 65536.*expected sha256:"):
        decode_chunk(layer, chunk, bytes(span))
    with pytest.raises(InvalidArgument, match="compressed bytes"):
        decode_chunk(layer, chunk, bytes(span[:-1]))


@pytest.mark.parametrize("blob", [
    pytest.param(gzip.compress(b"\0" * 10240), id="gzip"),
    pytest.param(zstandard.ZstdCompressor().compress(b"\0" * 10240), id="zstd"),
    pytest.param(b"\0" * 10240, id="tar"),
    pytest.param(b"abc", id="tiny"),
])
async def test_plain_layers_are_not_lazy(blob: bytes) -> None:
    reader = Blob(blob)
    assert await load_lazy_layer(reader.read, len(blob), what="plain") is None
    assert parse_footer(blob[-FOOTER_PROBE:], len(blob)) is None
    assert len(reader.calls) == 1


async def test_large_tail_read_catches_the_toc_in_one_request() -> None:
    res = build(build_estargz)
    assert res.blob is not None
    reader = Blob(res.blob)
    layer = await load_lazy_layer(reader.read, len(res.blob), what="L", tail_size=1 << 20)
    assert layer is not None and len(reader.calls) == 1


async def test_short_read_is_an_error() -> None:
    res = build(build_estargz)
    assert res.blob is not None
    blob = res.blob

    async def short(offset: int, length: int) -> bytes:
        return blob[offset:offset + length - 1]

    with pytest.raises(InvalidArgument, match="short read"):
        await load_lazy_layer(short, len(blob), what="L")


async def test_zstd_manifest_annotations_new_and_old_names() -> None:
    res = build(build_zstd_chunked)
    assert res.blob is not None
    for old in (False, True):
        ann = {(k.replace("io.github.containers", "io.containers") if old else k): v
               for k, v in res.annotations.items()}
        reader = Blob(res.blob)
        layer = await load_lazy_layer(reader.read, len(res.blob), what="L", annotations=ann)
        assert layer is not None
        assert len(reader.calls) == 1  # the position annotation saves the footer read
        assert layer.toc_digest == parse_digest(next(
            v for k, v in ann.items() if k.endswith("manifest-checksum")))
        bad = {**ann, next(k for k in ann if k.endswith("checksum")): str(digest_bytes(b""))}
        with pytest.raises(DigestMismatch):
            await load_lazy_layer(Blob(res.blob).read, len(res.blob), what="L", annotations=bad)


async def test_estargz_annotation_digest_is_checked() -> None:
    res = build(build_estargz)
    assert res.blob is not None
    assert res.annotations["containerd.io/snapshot/stargz/toc.digest"] == str(res.toc_digest)
    assert res.annotations["io.containers.estargz.uncompressed-size"] == str(
        res.uncompressed_size)
    bad = {"containerd.io/snapshot/stargz/toc.digest": "sha256:" + hashlib.sha256().hexdigest()}
    with pytest.raises(DigestMismatch):
        await load(res.blob, annotations=bad)
