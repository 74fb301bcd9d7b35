"""A gzip layer mounted lazily from its side index (``content.gzindex``): parsing, chunks, spans.

:func:`parse_gzip_index` treats the index as hostile: it must name the layer it is used for,
its blob size, checkpoints that advance, one digest per span, windows of the right length,
and a TOC (``content.toc``'s validation) whose every part lies inside one span. Anything else
is :class:`InvalidArgument` (the caller pulls the layer natively).

Versions 1 and 2 both mount: a version 1 index (4 MiB spans, no ``marks``) describes and
verifies the bytes as well as a version 2 one, only less finely (a read inflates its whole
span), and refusing it would turn images indexed by an older snapfs native until re-indexed.

:func:`gzip_lazy_layer` turns it into a :class:`~content.lazyformat.LazyLayer`: each file part
is a :class:`~content.lazyformat.Chunk` whose compressed range starts at its span's checkpoint
and, in version 2, ends at the first mark past the part's end (rounded up to :data:`GRANULE`,
so parts close together share a request), not at the span's end; ``inner_offset`` is where
the part starts in the span. :class:`SpanDecoder` keeps one inflate stream per span and feeds
it whatever prefix of the span a fetch brought: each part is verified against its own
digest before it is served, and the span against its digest once it has been inflated whole.
A failure is :class:`DigestMismatch` naming the span, its blob range and both digests; the
span's stream is dropped with it (the next read starts afresh from the checkpoint).

Trust: the index is not vouched for by the image manifest (it is found through the
referrers of the manifest, fetched by digest): its digests catch corruption and an index that
does not describe these bytes, not a hostile pusher of the repository. The completed layer is
verified against the layer digest and the diffID before it is materialised.
"""

from __future__ import annotations

import bisect
import json
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import zstandard

from content.digest import Digest, parse_digest, verify_bytes
from content.errors import DigestMismatch, InvalidArgument
from content.gzindex import MAGIC, VERSION
from content.lazyformat import Chunk, LazyLayer, link_hardlinks
from content.toc import TOC, TOCLocation, parse_toc_json
from content.zinflate import RAW, WINDOW, Inflater

MAX_INDEX = 1 << 30  # uncompressed bytes an index may claim
GRANULE = 32 << 10  # a part's compressed range is rounded up to this (neighbours come along)
_KEPT_BYTES = 32 << 20  # inflated span prefixes kept in memory, in all
_STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class Checkpoint:
    in_offset: int  # compressed bytes consumed (the last one with ``bits`` unused)
    bits: int
    out_offset: int  # uncompressed offset
    window: bytes


@dataclass(frozen=True, slots=True)
class GzipIndex:
    layer: Digest
    blob_size: int
    uncompressed_size: int
    diff_id: Digest
    span: int
    checkpoints: list[Checkpoint]
    span_digests: list[Digest]
    toc: TOC
    version: int = VERSION
    marks: list[tuple[int, int]] = field(default_factory=list)  # (out, in), version 2

    def span_range(self, i: int) -> tuple[int, int]:
        """Blob offset and length of span ``i``'s compressed bytes (with its partial byte)."""
        cp = self.checkpoints[i]
        start = cp.in_offset - (1 if cp.bits else 0)
        end = (self.checkpoints[i + 1].in_offset if i + 1 < len(self.checkpoints)
               else self.blob_size)
        return start, end - start

    def span_out(self, i: int) -> tuple[int, int]:
        """Uncompressed offset and length of span ``i``."""
        start = self.checkpoints[i].out_offset
        end = (self.checkpoints[i + 1].out_offset if i + 1 < len(self.checkpoints)
               else self.uncompressed_size)
        return start, end - start


def _section(raw: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 4 > len(raw):
        raise InvalidArgument(f"{what}: index truncated")
    (n,) = struct.unpack_from(">I", raw, pos)
    if pos + 4 + n > len(raw):
        raise InvalidArgument(f"{what}: index truncated")
    return raw[pos + 4:pos + 4 + n], pos + 4 + n


def _int(doc: dict[str, Any], key: str, what: str) -> int:
    v = doc.get(key)
    if type(v) is not int or v < 0:
        raise InvalidArgument(f"{what}: index field {key!r} must be a non-negative integer")
    return v


def parse_gzip_index(data: bytes, *, layer: Digest, blob_size: int, what: str) -> GzipIndex:
    """Parse and validate an index for ``layer`` (``blob_size`` bytes); see the module doc."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_INDEX)
    except zstandard.ZstdError as exc:
        raise InvalidArgument(f"{what}: index is not zstd ({exc})") from None
    if not raw.startswith(MAGIC):
        raise InvalidArgument(f"{what}: not a snapfs gzip index")
    head, pos = _section(raw, len(MAGIC), what)
    toc_raw, pos = _section(raw, pos, what)
    windows = memoryview(raw)[pos:]
    try:
        doc = json.loads(head)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: index header is not JSON ({exc})") from None
    version = doc.get("version") if isinstance(doc, dict) else None
    if version not in (1, VERSION):
        raise InvalidArgument(f"{what}: gzip index version {version!r} is not supported "
                              f"(this snapfs reads versions 1 to {VERSION})")
    if doc.get("layer") != str(layer):
        raise InvalidArgument(f"{what}: the index is for layer {doc.get('layer')}, not {layer}")
    if _int(doc, "blobSize", what) != blob_size:
        raise InvalidArgument(f"{what}: the index is for a blob of {doc['blobSize']} bytes, "
                              f"not {blob_size}")
    total = _int(doc, "uncompressedSize", what)
    cps_raw, digests_raw = doc.get("checkpoints"), doc.get("spanDigests")
    if not isinstance(cps_raw, list) or not isinstance(digests_raw, list) or not cps_raw \
            or len(cps_raw) != len(digests_raw):
        raise InvalidArgument(f"{what}: index needs one span digest per checkpoint")
    cps: list[Checkpoint] = []
    wpos = 0
    for n, c in enumerate(cps_raw):
        if not (isinstance(c, list) and len(c) == 4 and all(type(x) is int for x in c)):
            raise InvalidArgument(f"{what}: checkpoint {n} is malformed")
        i, b, o, wlen = c
        prev = cps[-1] if cps else None
        if not (0 <= b <= 7 and 0 < i < blob_size and 0 <= o < max(total, 1)
                and wlen == min(o, WINDOW) and ((prev is None and o == 0) or (prev is not None
                and i > prev.in_offset and o > prev.out_offset))):
            raise InvalidArgument(f"{what}: checkpoint {n} {c} is out of order or range")
        cps.append(Checkpoint(i, b, o, bytes(windows[wpos:wpos + wlen])))
        wpos += wlen
    if wpos != len(windows):
        raise InvalidArgument(f"{what}: index windows hold {len(windows)} bytes, the "
                              f"checkpoints name {wpos}")
    try:
        digests = [parse_digest(d) for d in digests_raw]
        diff_id = parse_digest(str(doc.get("diffID")))
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: index: {exc}") from None
    marks = _marks(doc, version, total, blob_size, what)
    toc = parse_toc_json(toc_raw, f"{what} (gzip index)", limit=max(total, 1))
    if toc.malformed:
        # Unlike a TOC the manifest vouches for, an index nothing vouches for is all or
        # nothing: one that does not describe the layer is ignored (native pull).
        raise InvalidArgument(next(iter(toc.malformed.values())))
    return GzipIndex(layer, blob_size, total, diff_id, _int(doc, "span", what), cps, digests,
                     toc, version, marks)


def _marks(doc: dict[str, Any], version: int, total: int, blob_size: int,
           what: str) -> list[tuple[int, int]]:
    """Version 2's marks, increasing in both offsets and within the layer. A wrong mark can
    only make a read fetch too little (it then fails verification) or too much."""
    if version == 1:
        return []
    raw = doc.get("marks")
    if not isinstance(raw, list):
        raise InvalidArgument(f"{what}: index field 'marks' must be a list")
    out: list[tuple[int, int]] = []
    for n, m in enumerate(raw):
        if not (isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m)
                and 0 < m[0] <= total and 0 < m[1] <= blob_size
                and (not out or (m[0] > out[-1][0] and m[1] > out[-1][1]))):
            raise InvalidArgument(f"{what}: mark {n} {m} is malformed, out of order or range")
        out.append((m[0], m[1]))
    return out


def _span_of(index: GzipIndex, outs: list[int], offset: int, size: int, what: str) -> int:
    i = bisect.bisect_right(outs, offset) - 1
    if i < 0 or offset + size > sum(index.span_out(i)):
        raise InvalidArgument(f"{what}: gzip index part at {offset}+{size} crosses a span")
    return i


def _needed(index: GzipIndex, mark_outs: list[int], i: int, end: int) -> int:
    """Compressed bytes from span ``i``'s start that inflate past uncompressed offset ``end``:
    to the first mark at or past it, rounded up to :data:`GRANULE`, at most the span (pure)."""
    start, length = index.span_range(i)
    j = bisect.bisect_left(mark_outs, end)
    if j == len(mark_outs):
        return length
    need = index.marks[j][1] - start
    return min(length, -(-need // GRANULE) * GRANULE) if need > 0 else length


def gzip_lazy_layer(index: GzipIndex, index_digest: Digest, what: str) -> LazyLayer:
    """The lazy layer an index describes (pure; validates that parts lie within spans)."""
    outs = [cp.out_offset for cp in index.checkpoints]
    mark_outs = [o for o, _ in index.marks]
    files: dict[str, list[Chunk]] = {}
    units: dict[int, list[Chunk]] = {}
    current: list[Chunk] | None = None
    for e in index.toc.entries:
        if e.type == "reg":
            current = files[e.name] = []
        elif e.type != "chunk":
            current = None
            continue
        if current is None or not e.chunk_size:
            continue
        if e.chunk_digest is None:
            raise InvalidArgument(f"{what}: gzip index part of {e.name!r} has no digest")
        i = _span_of(index, outs, e.offset, e.chunk_size, what)
        start = index.span_range(i)[0]
        c = Chunk(e.name, e.chunk_offset, e.chunk_size, start,
                  _needed(index, mark_outs, i, e.offset + e.chunk_size), e.chunk_digest,
                  e.offset - outs[i])
        current.append(c)
        units.setdefault(start, []).append(c)
    link_hardlinks(index.toc, files)
    loc = TOCLocation("gzip-index", 0, 0, 0, index.blob_size, 0)
    layer = LazyLayer("gzip-index", index.toc, index_digest, index.blob_size, files, loc, what,
                      units=units,
                      fetch_unit=max(index.span_range(i)[1] for i in range(len(outs))))
    layer.decoder = SpanDecoder(index, what).decode
    return layer


@dataclass(eq=False, slots=True)
class _Progress:
    """How far one span has been inflated: its stream, the compressed bytes fed to it (from
    the span's start) and the output so far. Used under ``lock`` only."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stream: Inflater | None = None
    fed: int = 0
    out: bytearray = field(default_factory=bytearray)
    whole: bool = False  # inflated to the span's end and verified against its digest

    def end_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def reset(self) -> None:
        self.end_stream()
        self.out.clear()
        self.fed, self.whole = 0, False


class SpanDecoder:
    """Inflates spans incrementally and verifies what it serves (called from threads)."""

    def __init__(self, index: GzipIndex, what: str) -> None:
        self._index = index
        self._what = what
        self._by_start = {index.span_range(i)[0]: i for i in range(len(index.checkpoints))}
        self._lock = threading.Lock()
        self._kept: OrderedDict[int, _Progress] = OrderedDict()

    def decode(self, chunk: Chunk, raw: bytes) -> bytes:
        i = self._by_start.get(chunk.blob_offset)
        if i is None:
            raise InvalidArgument(f"{self._what}: no span starts at {chunk.blob_offset}")
        end = chunk.inner_offset + chunk.size
        p = self._progress(i)
        with p.lock:
            try:
                self._advance(i, p, raw, end)
                part = bytes(p.out[chunk.inner_offset:end])
                verify_bytes(f"{self._what}: /{chunk.path} at {chunk.file_offset} (span {i})",
                             part, chunk.digest)
            except DigestMismatch:
                self._drop(i, p)
                raise
        return part

    def _progress(self, i: int) -> _Progress:
        evicted: list[_Progress] = []
        with self._lock:
            p = self._kept.get(i)
            if p is None:
                p = self._kept[i] = _Progress()
            self._kept.move_to_end(i)
            held = sum(len(k.out) for k in self._kept.values())
            while held > _KEPT_BYTES and len(self._kept) > 1:
                _, old = self._kept.popitem(last=False)
                held -= len(old.out)
                evicted.append(old)
        for old in evicted:
            with old.lock:  # a reader that still holds it starts afresh
                old.reset()
        return p

    def _drop(self, i: int, p: _Progress) -> None:
        p.reset()
        with self._lock:
            if self._kept.get(i) is p:
                del self._kept[i]

    def _advance(self, i: int, p: _Progress, raw: bytes, end: int) -> None:
        """Feed span ``i``'s stream the part of ``raw`` (the span's first bytes) it has not
        had, until ``end`` bytes are out; all of ``raw`` is inflated (it is paid for)."""
        ix = self._index
        cp = ix.checkpoints[i]
        start, length = ix.span_range(i)
        out_start, out_len = ix.span_out(i)
        what = (f"{self._what}: span {i} (blob {start}+{length}, uncompressed "
                f"{out_start}+{out_len})")
        expected = ix.span_digests[i]
        data = raw[:length]
        try:
            if p.stream is None and not p.whole:
                if cp.bits and not data:
                    return
                p.stream = Inflater(RAW, bits=cp.bits, value=data[0] >> (8 - cp.bits)
                                    if cp.bits else 0, window=cp.window)
                p.fed = 1 if cp.bits else 0
            z = p.stream
            while z is not None and p.fed < len(data) and len(p.out) < out_len \
                    and not z.finished:
                got, pos = z.inflate(data, p.fed, min(out_len - len(p.out), _STEP))
                p.out += got
                if not got and pos == p.fed:
                    break
                p.fed = pos
        except zlib.error as exc:
            raise DigestMismatch(what, str(expected), f"undecodable data ({exc})") from None
        if len(p.out) == out_len and not p.whole:
            p.end_stream()
            verify_bytes(what, p.out, expected)
            p.whole = True
        if len(p.out) < end:
            raise DigestMismatch(what, str(expected), f"{len(data)} compressed bytes inflated "
                                 f"to {len(p.out)}, where {end} were needed")


__all__ = ["Checkpoint", "GzipIndex", "SpanDecoder", "gzip_lazy_layer", "parse_gzip_index"]
