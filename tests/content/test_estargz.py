"""eStargz specifics: footers, the TOC member, writer options, and what tar tools make of it."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from content.digest import digest_bytes
from content.errors import InvalidArgument
from content.estargz import (
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    build_estargz,
    estargz_footer,
    parse_estargz_footer,
)
from content.lazyformat import decode_chunk, load_lazy_layer, parse_footer
from tests.content.test_lazyformat import CHUNK, Blob, load, read_file, sample_entries, sample_tar
from tests.fixtures.realenv import need_binary


def legacy_footer(toc_offset: int) -> bytes:
    sub = b"%016xSTARGZ" % toc_offset
    return b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + len(sub).to_bytes(2, "little") + sub + \
        b"\x01\x00\x00\xff\xff" + b"\0" * 8


def test_footer_is_51_bytes_of_empty_gzip() -> None:
    f = estargz_footer(0x1234)
    assert len(f) == FOOTER_SIZE
    assert gzip.decompress(f) == b""
    assert b"00000000000012" + b"34STARGZ" in f
    blob = b"\0" * 0x2000 + f
    loc = parse_estargz_footer(f, len(blob), "L")
    assert loc is not None
    assert (loc.toc_offset, loc.toc_length, loc.payload_end) == (0x1234, 0x2000 - 0x1234, 0x1234)


def test_legacy_47_byte_footer_is_read() -> None:
    f = legacy_footer(0x20)
    assert len(f) == LEGACY_FOOTER_SIZE and gzip.decompress(f) == b""
    loc = parse_footer(b"\0" * 100 + f, 147, "L")
    assert loc is not None and loc.format == "estargz"
    assert (loc.toc_offset, loc.toc_length, loc.footer_size) == (0x20, 100 - 0x20, 47)


async def test_legacy_footer_layer_loads() -> None:
    res = build_estargz(io.BytesIO(sample_tar()), chunk_size=CHUNK, level=1)
    assert res.blob is not None
    loc = parse_footer(res.blob[-FOOTER_SIZE:], len(res.blob))
    assert loc is not None
    blob = res.blob[:-FOOTER_SIZE] + legacy_footer(loc.toc_offset)
    layer = await load(blob)
    assert read_file(layer, blob, "etc/hostname") == b"snapfs\n"


def test_footer_pointing_outside_the_blob_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="TOC offset 65535, outside the 60-byte blob"):
        parse_footer(b"\0" * 9 + estargz_footer(0xFFFF), 60, "L")


async def test_toc_member_must_hold_the_index() -> None:
    member = gzip.compress(_tar_of("not-the-index", b"{}"))
    blob = b"\0" * 10 + member + estargz_footer(10)
    with pytest.raises(InvalidArgument, match=r"does not start with stargz\.index\.json"):
        await load(blob)
    blob = b"\0" * 10 + b"garbage!" * 4 + estargz_footer(10)
    with pytest.raises(InvalidArgument, match="cannot read the eStargz TOC"):
        await load(blob)


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_inner_offset_files_sharing_one_member() -> None:
    """Newer stargz writers pack small files into one member, told apart by innerOffset."""
    head = gzip.compress(b"H" * 512)
    payload_at = len(head)
    shared = gzip.compress(b"AAAA" + b"BBBBB")
    toc_at = payload_at + len(shared)
    entries: list[dict[str, Any]] = [
        {"name": "a", "type": "reg", "size": 4, "offset": payload_at,
         "chunkDigest": str(digest_bytes(b"AAAA"))},
        {"name": "b", "type": "reg", "size": 5, "offset": payload_at, "innerOffset": 4,
         "chunkDigest": str(digest_bytes(b"BBBBB"))},
    ]
    toc_member = gzip.compress(_tar_of("stargz.index.json", json.dumps(
        {"version": 1, "entries": entries}).encode()))
    blob = head + shared + toc_member + estargz_footer(toc_at)
    layer = await load(blob)
    assert read_file(layer, blob, "a") == b"AAAA"
    assert read_file(layer, blob, "b") == b"BBBBB"
    assert layer.files["b"][0].blob_length == len(shared)


def test_output_file_and_unseekable_input(tmp_path: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            data = self._src.read(len(b))
            b[:len(data)] = data
            return len(data)

    expected = build_estargz(io.BytesIO(sample_tar()), chunk_size=CHUNK)
    with open(tmp_path / "layer", "wb") as out:
        res = build_estargz(Pipe(sample_tar()), out=out, chunk_size=CHUNK)  # type: ignore[arg-type]
    assert res.blob is None
    assert (tmp_path / "layer").read_bytes() == expected.blob
    assert (res.blob_digest, res.toc_digest, res.diff_id) == (
        expected.blob_digest, expected.toc_digest, expected.diff_id)


def test_writer_refuses_bad_input() -> None:
    with pytest.raises(InvalidArgument, match="prioritized file 'nope' is not in the layer"):
        build_estargz(io.BytesIO(sample_tar()), prioritized=["nope"])
    with pytest.raises(InvalidArgument, match="chunk size must be positive"):
        build_estargz(io.BytesIO(sample_tar()), chunk_size=0)
    with pytest.raises(InvalidArgument, match="not a readable tar"):
        build_estargz(io.BytesIO(b"x" * 1000))
    with pytest.raises(InvalidArgument, match="collides with the eStargz TOC"):
        build_estargz(io.BytesIO(_tar_of("stargz.index.json", b"{}")))


async def test_prioritized_hardlink_brings_its_target_first() -> None:
    res = build_estargz(io.BytesIO(sample_tar()), chunk_size=CHUNK,
                        prioritized=["usr/bin/tool2"])
    assert res.blob is not None
    layer = await load(res.blob)
    names = [e.name for e in layer.toc.entries if e.type != "chunk"]
    assert names.index("usr/bin/tool") < names.index("usr/bin/tool2") < names.index(
        ".prefetch.landmark")


def test_gnu_tar_extracts_the_blob(tmp_path: Path) -> None:
    tar = need_binary("tar")
    res = build_estargz(io.BytesIO(sample_tar()), chunk_size=CHUNK)
    assert res.blob is not None
    (tmp_path / "layer.tar.gz").write_bytes(res.blob)
    out = tmp_path / "root"
    out.mkdir()
    # No device nodes without privileges we may not have: extract everything else.
    subprocess.run([tar, "-xzf", str(tmp_path / "layer.tar.gz"), "-C", str(out),
                    "--exclude=dev-null", "--no-same-owner"], check=True)
    for name, ent in sample_entries().items():
        if ent.type == tarfile.REGTYPE:
            assert (out / name).read_bytes() == ent.data
    assert (out / "stargz.index.json").exists()
    assert (out / "bin").is_symlink()


async def test_gzip_chunk_decode_stops_at_the_chunk() -> None:
    """A chunk span decodes without reading past it, even when headers share its member."""
    res = build_estargz(io.BytesIO(sample_tar()), chunk_size=CHUNK)
    assert res.blob is not None
    reader = Blob(res.blob)
    layer = await load_lazy_layer(reader.read, len(res.blob), what="L")
    assert layer is not None
    last = layer.files["usr/lib/big.so"][-1]
    raw = res.blob[last.blob_offset:last.blob_offset + last.blob_length]
    assert decode_chunk(layer, last, raw + b"trailing") == sample_entries()["usr/lib/big.so"].data[
        last.file_offset:]
