"""Lazy layer detection and the chunk model shared by eStargz and zstd:chunked.

A layer's format is decided from the blob alone (containerd does not pass layer annotations to
a proxy snapshotter): the last :data:`FOOTER_PROBE` bytes hold either an eStargz footer or a
zstd:chunked footer frame, or neither (a plain layer: the native path).

A :class:`Chunk` is the unit a lazy layer fetches and verifies: ``blob_length`` compressed
bytes at ``blob_offset`` decode to ``inner_offset`` bytes to skip, then ``size`` bytes of
``path`` starting at ``file_offset``, whose sha256 is ``digest``. The compressed span of a chunk
runs to the next larger payload offset in the TOC, or to where the TOC begins; zstd:chunked's
``endOffset`` may end the last chunk of a file earlier.

Must not make HTTP requests: blob bytes come through the caller's ``read_range``.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio
import zstandard

from content.digest import Digest, digest_bytes, parse_digest, verify_bytes
from content.errors import DigestMismatch, InvalidArgument
from content.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    estargz_toc_json,
    gunzip_prefix,
    parse_estargz_footer,
)
from content.mediatypes import ANN_STARGZ_TOC_DIGEST
from content.toc import TOC, TOCEntry, TOCLocation, parse_toc_json
from content.zstdchunked import (
    checksum_annotation,
    location_from_annotations,
    parse_zstd_footer,
    unzstd_prefix,
    zstd_toc_json,
)

FOOTER_PROBE = 72  # the largest footer: zstd:chunked's 64-byte payload in a skippable frame
ReadRange = Callable[[int, int], Awaitable[bytes]]
_TOC_LIMITER = trio.CapacityLimiter(2)


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    file_offset: int
    size: int  # uncompressed
    blob_offset: int
    blob_length: int  # compressed span in the blob
    digest: Digest  # of the uncompressed chunk
    inner_offset: int = 0  # uncompressed bytes to skip within the span (eStargz innerOffset)


@dataclass(slots=True)
class LazyLayer:
    """An indexed lazy layer. ``files`` maps every regular file (and hardlink to one) to its
    chunks in file order; an empty file maps to ``[]``.

    ``toc_digest``: sha256 of the TOC JSON for eStargz, of the compressed manifest (the
    ``manifest-checksum`` annotation) for zstd:chunked, of the side index for gzip-index.

    A gzip-index layer (``content.gzlayer``) fetches in *units* larger than a chunk: every
    chunk of a span starts at the span's checkpoint (it must be inflated from there) and
    runs to a point past its own data. ``decoder`` replaces :func:`decode_chunk`'s own
    decoding; ``units`` maps a unit's blob offset to all its chunks (a fetch of one lands
    those whose range it covers); ``fetch_unit`` is the largest unit, which one request must
    be allowed to hold.
    """

    format: str  # "estargz" | "zstd:chunked" | "gzip-index"
    toc: TOC
    toc_digest: Digest
    blob_size: int
    files: Mapping[str, list[Chunk]]
    location: TOCLocation
    what: str
    decoder: Callable[[Chunk, bytes], bytes] | None = None
    units: Mapping[int, list[Chunk]] = field(default_factory=dict)
    fetch_unit: int = 0

    @property
    def malformed(self) -> Mapping[str, str]:
        """Regular files whose TOC entries are malformed, with why: listed, not readable."""
        return self.toc.malformed


def parse_footer(tail: bytes, blob_size: int, what: str = "layer") -> TOCLocation | None:
    """Where the TOC is, from the blob's last bytes; None for a plain (non-lazy) layer.

    A footer that is recognisably one of ours but points outside the blob raises
    :class:`InvalidArgument`; callers may still choose the native path for that layer.
    """
    return parse_estargz_footer(tail, blob_size, what) or parse_zstd_footer(
        tail, blob_size, what)


def chunk_map(toc: TOC, loc: TOCLocation, what: str) -> dict[str, list[Chunk]]:
    """Plan every chunk of every file from a validated TOC. A file whose chunks cannot be
    planned (one with no digest) gets none and joins ``toc.malformed``."""
    starts = sorted({e.offset for e in toc.entries if e.type in ("reg", "chunk") and e.offset})
    files: dict[str, list[Chunk]] = {}
    reg: TOCEntry | None = None
    group: list[TOCEntry] = []

    def flush() -> None:
        if reg is None or reg.name in toc.malformed:
            return
        try:
            files[reg.name] = _chunks(reg, group, starts, loc, what)
        except InvalidArgument as exc:
            toc.malformed[reg.name] = str(exc)

    for e in toc.entries:
        if e.type == "chunk":
            group.append(e)
            continue
        flush()
        reg, group = (e, [e]) if e.type == "reg" else (None, [])
    flush()
    link_hardlinks(toc, files)
    return files


def link_hardlinks(toc: TOC, files: dict[str, list[Chunk]]) -> None:
    """Give every hardlink to a regular file its target's chunks (pure)."""
    types = {e.name: e for e in toc.entries if e.type != "chunk"}
    for e in toc.entries:
        if e.type == "hardlink":
            target, hops = types.get(e.linkname), 0
            while target is not None and target.type == "hardlink" and hops < 64:
                target, hops = types.get(target.linkname), hops + 1
            if target is not None and target.type == "reg" and target.name in files:
                files[e.name] = files[target.name]


def _chunks(reg: TOCEntry, group: list[TOCEntry], starts: list[int], loc: TOCLocation,
            what: str) -> list[Chunk]:
    if reg.size == 0:
        return []
    out: list[Chunk] = []
    for i, c in enumerate(group):
        j = bisect.bisect_right(starts, c.offset)
        end = starts[j] if j < len(starts) else loc.payload_end
        if i == len(group) - 1 and reg.end_offset:
            end = min(end, reg.end_offset)
        digest = c.chunk_digest or (reg.digest if len(group) == 1 else None)
        if digest is None:
            raise InvalidArgument(f"{what}: file {reg.name!r}: chunk at {c.chunk_offset} has "
                                  "no digest to verify it against")
        out.append(Chunk(reg.name, c.chunk_offset, c.chunk_size, c.offset, end - c.offset,
                         digest, c.inner_offset))
    return out


def _index(loc: TOCLocation, raw: bytes, blob_size: int, what: str,
           expected: Digest | None) -> LazyLayer:
    algorithm = expected.algorithm if expected else "sha256"
    if loc.format == "estargz":
        data = estargz_toc_json(raw, what)
        computed = digest_bytes(data, algorithm)
        accepted = {computed}
    else:
        data = zstd_toc_json(raw, loc, what)
        computed = digest_bytes(raw, algorithm)
        # stargz-snapshotter's toc.digest for zstd:chunked covers the uncompressed JSON.
        accepted = {computed, digest_bytes(data, algorithm)}
    if expected is not None and expected not in accepted:
        raise DigestMismatch(f"{what}: {loc.format} TOC", str(expected), str(computed))
    toc = parse_toc_json(data, what, limit=loc.payload_end)
    files = chunk_map(toc, loc, what)
    return LazyLayer(loc.format, toc, computed, blob_size, files, loc, what)


async def _read(read_range: ReadRange, offset: int, length: int, what: str) -> bytes:
    data = await read_range(offset, length)
    if len(data) != length:
        raise InvalidArgument(f"{what}: short read at {offset}: {len(data)} of {length} bytes")
    return data


async def load_lazy_layer(read_range: ReadRange, blob_size: int, *, what: str,
                          toc_digest: Digest | None = None,
                          annotations: Mapping[str, str] | None = None,
                          tail_size: int = FOOTER_PROBE,
                          fetched: Callable[[str], None] | None = None) -> LazyLayer | None:
    """Index a lazy layer with at most two range reads (footer, TOC); None for a plain layer.

    ``annotations`` (layer descriptor annotations, when the client passed them) may give the
    zstd:chunked manifest position (then only the TOC is read) and the expected TOC digest.
    A larger ``tail_size`` may catch the TOC in the first read. The TOC is verified against
    ``toc_digest`` (or the annotation) when known. ``fetched`` is told the format once every
    byte is read and before the (CPU-bound) check and parse: another process holding the
    same reads can parse them meanwhile.
    """
    ann = annotations or {}
    if toc_digest is None:
        text = ann.get(ANN_STARGZ_TOC_DIGEST) or checksum_annotation(ann)
        toc_digest = parse_digest(text) if text else None
    loc = location_from_annotations(ann, blob_size, what)
    raw: bytes | None = None
    if loc is None:
        n = min(max(tail_size, FOOTER_PROBE), blob_size)
        tail = await _read(read_range, blob_size - n, n, what)
        loc = parse_footer(tail, blob_size, what)
        if loc is None:
            return None
        if loc.toc_offset >= blob_size - n:
            start = loc.toc_offset - (blob_size - n)
            raw = tail[start:start + loc.toc_length]
    if raw is None:
        raw = await _read(read_range, loc.toc_offset, loc.toc_length, what)
    if fetched is not None:
        fetched(loc.format)
    location, expected = loc, toc_digest
    return await trio.to_thread.run_sync(
        lambda: _index(location, raw, blob_size, what, expected), limiter=_TOC_LIMITER)


def decode_chunk(layer: LazyLayer, chunk: Chunk, raw: bytes) -> bytes:
    """Decompress a chunk's span and verify it; :class:`DigestMismatch` names file and offset.

    CPU-bound: call it from a worker thread for large chunks.
    """
    if layer.decoder is not None:
        return layer.decoder(chunk, raw)
    what = f"{layer.what}: {chunk.path} at offset {chunk.file_offset}"
    if len(raw) < chunk.blob_length:
        raise InvalidArgument(f"{what}: got {len(raw)} of {chunk.blob_length} compressed bytes")
    span = raw[:chunk.blob_length]
    need = chunk.inner_offset + chunk.size
    try:
        decode = gunzip_prefix if layer.format == "estargz" else unzstd_prefix
        data = decode(span, need)
    except (zlib.error, zstandard.ZstdError, EOFError) as e:
        raise DigestMismatch(what, str(chunk.digest), f"undecodable data ({e})") from None
    data = data[chunk.inner_offset:]
    if len(data) != chunk.size:
        raise DigestMismatch(what, str(chunk.digest),
                             f"{len(data)} bytes where {chunk.size} were expected")
    verify_bytes(what, data, chunk.digest)
    return data


def prefetch_set(layer: LazyLayer) -> list[str] | None:
    """Regular files before ``.prefetch.landmark`` (the startup set); ``[]`` when the layer has
    ``.no.prefetch.landmark``; None when it has neither."""
    before: list[str] = []
    for e in layer.toc.entries:
        if e.name == NO_PREFETCH_LANDMARK:
            return []
        if e.name == PREFETCH_LANDMARK:
            return before
        if e.type == "reg":
            before.append(e.name)
    return None
