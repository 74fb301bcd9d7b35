"""zstd:chunked: footer, manifest (TOC) extraction, zstd chunk decoding, and the layer writer.

Layout (containers/storage ``pkg/chunked/compressor``)::

    [zstd: tar hdr][zstd: payload chunk][zstd: padding + hdrs] … [zstd: tar EOF]
    [skippable: zstd(manifest JSON)] ([skippable: zstd(tar-split)])  [skippable: footer]

Footer payload, little-endian u64s: manifest offset, compressed length, uncompressed length,
manifest type (1 = CRFS), then either the magic directly (40 bytes, old producers and
stargz-snapshotter, magic ``GnUlInUx``) or tar-split offset / compressed / uncompressed length
and the magic (64 bytes, current containers/storage, magic ``GNUlInUx``). Both are read.

We write the 64-byte footer without a tar-split frame (its fields are zero): tar-split only
lets containers/storage rebuild the original tar bit for bit, and consumers that need it fall
back to a full pull. The manifest checksum annotation is the sha256 of the *compressed*
manifest, which is also what :func:`build_zstd_chunked` reports as ``toc_digest``.

Must not make HTTP requests: blob bytes come through the caller's ``read_range``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from typing import BinaryIO

import zstandard

from content.chunkedtar import (
    DEFAULT_CHUNK_SIZE,
    MAX_TOC_BYTES,
    BuildResult,
    ChunkedSink,
    write_chunked_entries,
)
from content.digest import digest_bytes
from content.errors import InvalidArgument
from content.mediatypes import (
    ANN_ZSTD_MANIFEST_CHECKSUM,
    ANN_ZSTD_MANIFEST_CHECKSUM_OLD,
    ANN_ZSTD_MANIFEST_POSITION,
    ANN_ZSTD_MANIFEST_POSITION_OLD,
)
from content.toc import TOCLocation, toc_json

SKIPPABLE_MAGIC = 0x184D2A50  # 0x184D2A50..0x184D2A5F are all skippable
MAGIC = b"GNUlInUx"
MAGIC_OLD = b"GnUlInUx"
FOOTER_SIZES = (64, 40)  # footer payloads; each sits in an 8-byte skippable frame header
MANIFEST_TYPE_CRFS = 1

ZstdChunkedResult = BuildResult


def skippable_frame(data: bytes) -> bytes:
    return struct.pack("<II", SKIPPABLE_MAGIC, len(data)) + data


def _is_skippable(header: bytes) -> bool:
    return len(header) >= 4 and struct.unpack_from("<I", header)[0] & 0xFFFFFFF0 == SKIPPABLE_MAGIC


def _location(offset: int, length: int, ulength: int, mtype: int, blob_size: int,
              footer: int, what: str) -> TOCLocation:
    if mtype != MANIFEST_TYPE_CRFS:
        raise InvalidArgument(f"{what}: zstd:chunked manifest type {mtype} is not supported")
    if offset < 8 or length <= 0 or offset + length > blob_size - footer:
        raise InvalidArgument(f"{what}: zstd:chunked manifest at {offset}+{length} lies "
                              f"outside the {blob_size}-byte blob")
    if ulength > MAX_TOC_BYTES:
        raise InvalidArgument(f"{what}: zstd:chunked manifest of {ulength} bytes is too large")
    return TOCLocation("zstd:chunked", offset, length, ulength, offset - 8, footer)


def parse_zstd_footer(tail: bytes, blob_size: int, what: str) -> TOCLocation | None:
    """The manifest location from the blob's last bytes, or None if there is no such footer."""
    for size in FOOTER_SIZES:
        frame = size + 8
        if len(tail) < frame or blob_size < frame:
            continue
        f = tail[-frame:]
        if not _is_skippable(f) or struct.unpack_from("<I", f, 4)[0] != size:
            continue
        if f[-8:] not in (MAGIC, MAGIC_OLD):
            continue
        offset, length, ulength, mtype = struct.unpack_from("<QQQQ", f, 8)
        return _location(offset, length, ulength, mtype, blob_size, frame, what)
    return None


def location_from_annotations(annotations: Mapping[str, str], blob_size: int,
                              what: str) -> TOCLocation | None:
    """The manifest location from ``…zstd-chunked.manifest-position`` (new or old name)."""
    value = annotations.get(ANN_ZSTD_MANIFEST_POSITION) or annotations.get(
        ANN_ZSTD_MANIFEST_POSITION_OLD)
    if not value:
        return None
    try:
        offset, length, ulength, mtype = (int(p) for p in value.split(":"))
    except ValueError:
        raise InvalidArgument(f"{what}: zstd:chunked manifest position {value!r} is not "
                              "offset:length:uncompressedLength:type") from None
    return _location(offset, length, ulength, mtype, blob_size, 0, what)


def checksum_annotation(annotations: Mapping[str, str]) -> str | None:
    return annotations.get(ANN_ZSTD_MANIFEST_CHECKSUM) or annotations.get(
        ANN_ZSTD_MANIFEST_CHECKSUM_OLD)


def unzstd_prefix(raw: bytes, need: int) -> bytes:
    """The first ``need`` decompressed bytes of zstd frames (zstandard.ZstdError if bad)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
    out = bytearray()
    while len(out) < need:
        block = reader.read(need - len(out))
        if not block:
            break
        out += block
    return bytes(out)


def zstd_toc_json(raw: bytes, loc: TOCLocation, what: str) -> bytes:
    """The manifest JSON from its compressed bytes (``[toc_offset, +toc_length)``)."""
    cap = loc.toc_uncompressed_length or MAX_TOC_BYTES
    try:
        data = unzstd_prefix(raw, cap + 1)
    except zstandard.ZstdError as e:
        raise InvalidArgument(f"{what}: cannot decompress the zstd:chunked manifest ({e})") \
            from None
    if loc.toc_uncompressed_length and len(data) != loc.toc_uncompressed_length:
        raise InvalidArgument(f"{what}: zstd:chunked manifest is {len(data)} bytes, the "
                              f"footer says {loc.toc_uncompressed_length}")
    if len(data) > MAX_TOC_BYTES:
        raise InvalidArgument(f"{what}: zstd:chunked manifest is too large")
    return data


def build_zstd_chunked(tar_stream: BinaryIO, *, out: BinaryIO | None = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, prioritized: Sequence[str] = (),
                       level: int = 10) -> BuildResult:
    """Convert an uncompressed tar into a zstd:chunked blob (returned, or written to ``out``).

    A ``.prefetch.landmark`` is written only when ``prioritized`` is given: containers/storage
    consumers would otherwise see a stray ``.no.prefetch.landmark`` file in the rootfs.
    """
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    sink = ChunkedSink(out, cctx.compress)
    entries = write_chunked_entries(tar_stream, sink, chunk_size=chunk_size,
                                    prioritized=prioritized, record_end=True,
                                    no_prefetch_landmark=False)
    sink.write(b"\0" * 1024)  # tar end-of-archive, so the decompressed stream is a whole tar
    sink.cut()
    manifest = toc_json(entries)
    compressed = cctx.compress(manifest)
    offset = sink.pos + 8
    sink.raw(skippable_frame(compressed))
    footer = struct.pack("<QQQQQQQ", offset, len(compressed), len(manifest),
                         MANIFEST_TYPE_CRFS, 0, 0, 0) + MAGIC
    sink.raw(skippable_frame(footer))
    checksum = digest_bytes(compressed)
    return sink.result(checksum, {
        ANN_ZSTD_MANIFEST_CHECKSUM: str(checksum),
        ANN_ZSTD_MANIFEST_POSITION:
            f"{offset}:{len(compressed)}:{len(manifest)}:{MANIFEST_TYPE_CRFS}",
    })
