"""A gzip layer mounted lazily from its side index (``content.gzindex``): parsing, chunks, spans.

:func:`parse_gzip_index` treats the index as hostile: it must name the layer it is used for,
its blob size, checkpoints that advance, one digest per span, windows of the right length,
and a TOC (``content.toc``'s validation) whose every part lies inside one span. Anything else
is :class:`InvalidArgument` (the caller pulls the layer natively).

:func:`gzip_lazy_layer` turns it into a :class:`~content.lazyformat.LazyLayer`: each file part
is a :class:`~content.lazyformat.Chunk` whose compressed range is its span's, and whose
``inner_offset`` is where the part starts in the span. :class:`SpanDecoder` inflates a span
from its checkpoint once (a fetch lands every chunk of the span), verifies the *whole span*
against its digest, then each part against its own; a few verified spans are kept in memory
for the other parts of the same fetch. A failure is :class:`DigestMismatch` naming the span,
its blob range and both digests.

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
from dataclasses import dataclass
from typing import Any

import zstandard

from content.digest import Digest, digest_bytes, parse_digest, verify_bytes
from content.errors import DigestMismatch, InvalidArgument
from content.gzindex import MAGIC
from content.lazyformat import Chunk, LazyLayer, link_hardlinks
from content.toc import TOC, TOCLocation, parse_toc_json
from content.zinflate import WINDOW, inflate_span

MAX_INDEX = 1 << 30  # uncompressed bytes an index may claim
_KEPT_SPANS = 3


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
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise InvalidArgument(f"{what}: unsupported index version")
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
    toc = parse_toc_json(toc_raw, f"{what} (gzip index)", limit=max(total, 1))
    if toc.malformed:
        # Unlike a TOC the manifest vouches for, an index nothing vouches for is all or
        # nothing: one that does not describe the layer is ignored (native pull).
        raise InvalidArgument(next(iter(toc.malformed.values())))
    return GzipIndex(layer, blob_size, total, diff_id, _int(doc, "span", what), cps, digests,
                     toc)


def _span_of(index: GzipIndex, outs: list[int], offset: int, size: int, what: str) -> int:
    i = bisect.bisect_right(outs, offset) - 1
    if i < 0 or offset + size > sum(index.span_out(i)):
        raise InvalidArgument(f"{what}: gzip index part at {offset}+{size} crosses a span")
    return i


def gzip_lazy_layer(index: GzipIndex, index_digest: Digest, what: str) -> LazyLayer:
    """The lazy layer an index describes (pure; validates that parts lie within spans)."""
    outs = [cp.out_offset for cp in index.checkpoints]
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
        start, length = index.span_range(i)
        c = Chunk(e.name, e.chunk_offset, e.chunk_size, start, length, e.chunk_digest,
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


class SpanDecoder:
    """Inflates and verifies spans, each once while it stays among the last few (threads)."""

    def __init__(self, index: GzipIndex, what: str) -> None:
        self._index = index
        self._what = what
        self._by_start = {index.span_range(i)[0]: i for i in range(len(index.checkpoints))}
        self._lock = threading.Lock()
        self._span_locks: dict[int, threading.Lock] = {}
        self._kept: OrderedDict[int, bytes | DigestMismatch] = OrderedDict()

    def decode(self, chunk: Chunk, raw: bytes) -> bytes:
        i = self._by_start.get(chunk.blob_offset)
        if i is None:
            raise InvalidArgument(f"{self._what}: no span starts at {chunk.blob_offset}")
        span = self._span(i, raw)
        part = span[chunk.inner_offset:chunk.inner_offset + chunk.size]
        verify_bytes(f"{self._what}: /{chunk.path} at {chunk.file_offset} (span {i})", part,
                     chunk.digest)
        return part

    def _span(self, i: int, raw: bytes) -> bytes:
        with self._lock:
            lock = self._span_locks.setdefault(i, threading.Lock())
        with lock:
            kept = self._kept.get(i)
            if kept is None:
                kept = self._inflate(i, raw)
                with self._lock:
                    self._kept[i] = kept
                    while len(self._kept) > _KEPT_SPANS:
                        self._kept.popitem(last=False)
        if isinstance(kept, DigestMismatch):
            raise kept
        return kept

    def _inflate(self, i: int, raw: bytes) -> bytes | DigestMismatch:
        ix = self._index
        cp = ix.checkpoints[i]
        start, length = ix.span_range(i)
        out_start, out_len = ix.span_out(i)
        what = (f"{self._what}: span {i} (blob {start}+{length}, uncompressed "
                f"{out_start}+{out_len})")
        expected = ix.span_digests[i]
        try:
            data = inflate_span(raw[:length], out_len, bits=cp.bits, window=cp.window)
        except zlib.error as exc:
            return DigestMismatch(what, str(expected), f"undecodable data ({exc})")
        actual = digest_bytes(data, expected.algorithm)
        if actual != expected:
            return DigestMismatch(what, str(expected), str(actual))
        return data


__all__ = ["Checkpoint", "GzipIndex", "SpanDecoder", "gzip_lazy_layer", "parse_gzip_index"]
