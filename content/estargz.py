"""eStargz: footer, TOC extraction, gzip chunk decoding, and the layer writer.

Layout of a blob we write (and of what stargz-snapshotter's ``estargz`` package writes)::

    [gz: tar hdr …][gz: chunk 0 of f][gz: chunk 1 of f + padding + next hdrs …] …
    [gz: tar hdr "stargz.index.json" + TOC JSON + tar EOF][51-byte footer]

The footer is an empty gzip member whose Extra field holds ``SG`` + ``%016xSTARGZ`` of the TOC
member's offset; stargz's legacy footer (47 bytes) holds the bare ``%016xSTARGZ``. The whole blob
stays an ordinary tar+gzip, so any tool that reads ``.tar.gz`` reads it.

The chunked-tar writer (``content.chunkedtar``) is shared with zstd:chunked, which is the same
layout with zstd frames instead of gzip members, as in stargz-snapshotter's own zstd:chunked
compressor; this module adds the TOC entry and the footer. The writer's names are re-exported
here for the callers that know them as eStargz names.

Must not make HTTP requests: blob bytes come through the caller's ``read_range``.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
import zlib
from collections.abc import Sequence
from typing import Any, BinaryIO

from content.chunkedtar import (
    DEFAULT_CHUNK_SIZE,
    MAX_TOC_BYTES,
    TOC_TAR_NAME,
    BuildResult,
    ChunkedSink,
    write_chunked_entries,
)
from content.chunkedtar import LANDMARK_CONTENTS as LANDMARK_CONTENTS
from content.chunkedtar import NO_PREFETCH_LANDMARK as NO_PREFETCH_LANDMARK
from content.chunkedtar import PREFETCH_LANDMARK as PREFETCH_LANDMARK
from content.digest import digest_bytes
from content.errors import InvalidArgument
from content.mediatypes import ANN_STARGZ_TOC_DIGEST, ANN_UNCOMPRESSED_SIZE
from content.toc import TOCLocation, toc_json

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
_HEX16 = re.compile(rb"^[0-9a-f]{16}$")


EstargzResult = BuildResult


# --- footer ---------------------------------------------------------------------------------

def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte footer: an empty, stored gzip member with the TOC offset in its Extra."""
    sub = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(sub)) + sub
    header = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\x00\xff" + struct.pack("<H", len(extra))
    # Empty final stored block, then CRC32 and ISIZE of nothing.
    return header + extra + b"\x01\x00\x00\xff\xff" + b"\0" * 8


def parse_estargz_footer(tail: bytes, blob_size: int, what: str) -> TOCLocation | None:
    """The TOC location from the blob's last bytes, or None if they are no stargz footer."""
    for size, extra_at, xlen in ((FOOTER_SIZE, 16, 26), (LEGACY_FOOTER_SIZE, 12, 22)):
        if len(tail) < size or blob_size < size:
            continue
        f = tail[-size:]
        if f[:3] != b"\x1f\x8b\x08" or not f[3] & 0x04:
            continue
        if struct.unpack_from("<H", f, 10)[0] != xlen:
            continue
        if size == FOOTER_SIZE and (f[12:14] != b"SG" or struct.unpack_from("<H", f, 14)[0] != 22):
            continue
        sub = f[extra_at:extra_at + 22]
        if sub[16:] != b"STARGZ" or not _HEX16.match(sub[:16]):
            continue
        toc_offset = int(sub[:16], 16)
        if not 0 < toc_offset < blob_size - size:
            raise InvalidArgument(f"{what}: eStargz footer points at TOC offset {toc_offset}, "
                                  f"outside the {blob_size}-byte blob")
        return TOCLocation("estargz", toc_offset, blob_size - size - toc_offset, 0,
                           toc_offset, size)
    return None


# --- reading --------------------------------------------------------------------------------

def gunzip_prefix(raw: bytes, need: int) -> bytes:
    """The first ``need`` decompressed bytes of one or more gzip members (zlib.error if bad).

    Output is capped at ``need``, so a hostile span cannot inflate past what the TOC promised.
    """
    out = bytearray()
    data = raw
    while len(out) < need and data:
        d = zlib.decompressobj(31)
        out += d.decompress(data, need - len(out))
        while len(out) < need and d.unconsumed_tail:
            out += d.decompress(d.unconsumed_tail, need - len(out))
        if len(out) >= need or not d.eof:
            break
        data = d.unused_data
    return bytes(out)


def estargz_toc_json(raw: bytes, what: str) -> bytes:
    """The TOC JSON from the TOC member (``[toc_offset, footer)``)."""
    try:
        tar_bytes = gunzip_prefix(raw, MAX_TOC_BYTES + 4096)
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
            info = tf.next()
            if info is None or info.name != TOC_TAR_NAME or not info.isreg():
                raise InvalidArgument(f"{what}: TOC member does not start with {TOC_TAR_NAME}")
            if info.size > MAX_TOC_BYTES:
                raise InvalidArgument(f"{what}: TOC of {info.size} bytes is too large")
            f = tf.extractfile(info)
            assert f is not None
            data = f.read()
    except (zlib.error, tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArgument(f"{what}: cannot read the eStargz TOC ({e})") from None
    if len(data) != info.size:
        raise InvalidArgument(f"{what}: TOC truncated ({len(data)} of {info.size} bytes)")
    return data


# --- writing ------------------------------------------------------------------------------

def build_estargz(tar_stream: BinaryIO, *, out: BinaryIO | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, prioritized: Sequence[str] = (),
                  level: int = 9) -> BuildResult:
    """Convert an uncompressed tar into an eStargz blob (returned, or written to ``out``)."""
    sink = ChunkedSink(out, lambda b: _gzip(b, level))
    entries = write_chunked_entries(tar_stream, sink, chunk_size=chunk_size,
                                    prioritized=prioritized, record_end=False)
    return finish_estargz(sink, entries)


def finish_estargz(sink: ChunkedSink, entries: list[dict[str, Any]]) -> BuildResult:
    """After the chunks ``sink`` holds: the TOC of ``entries`` as a tar entry, the footer,
    and the result with its TOC digest annotation."""
    toc_offset = sink.cut()
    data = toc_json(entries)
    info = tarfile.TarInfo(TOC_TAR_NAME)
    info.size, info.mode = len(data), 0o644
    sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    sink.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE))
    sink.cut()
    sink.raw(estargz_footer(toc_offset))
    toc_digest = digest_bytes(data)
    return sink.result(toc_digest, {ANN_STARGZ_TOC_DIGEST: str(toc_digest),
                                    ANN_UNCOMPRESSED_SIZE: str(sink.diff.size)})


def _gzip(data: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()
