"""Planning a lazy layer's Range requests: pure functions over chunks (no I/O).

``plan_spans`` merges neighbouring chunks into requests; ``overlapping`` finds the chunks a
read covers; ``next_chunk`` and ``span`` help the fetcher (``snapfs.lazy.fetcher``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from content.lazyformat import Chunk

MAX_SPAN = 4 << 20  # one merged request fetches at most this many compressed bytes


def plan_spans(chunks: Iterable[Chunk], *, max_span: int = MAX_SPAN,
               max_gap: int = 0) -> list[list[Chunk]]:
    """Group chunks (by blob offset) into Range requests: neighbours whose gap is at most
    ``max_gap`` share a request while the request stays within ``max_span`` bytes (a single
    chunk larger than that still gets its own). Pure."""
    groups: list[list[Chunk]] = []
    start = end = 0
    for c in sorted(chunks, key=lambda c: c.blob_offset):
        c_end = c.blob_offset + c.blob_length
        if groups and c.blob_offset - end <= max_gap and max(end, c_end) - start <= max_span:
            groups[-1].append(c)
            end = max(end, c_end)
        else:
            groups.append([c])
            start, end = c.blob_offset, c_end
    return groups


def overlapping(chunks: Sequence[Chunk], offset: int, size: int) -> list[Chunk]:
    """The chunks of one file (in file order) that overlap ``[offset, offset + size)``. Pure."""
    if size <= 0 or not chunks:
        return []
    starts = [c.file_offset for c in chunks]
    i = max(bisect.bisect_right(starts, offset) - 1, 0)
    out: list[Chunk] = []
    for c in chunks[i:]:
        if c.file_offset >= offset + size:
            break
        if c.file_offset + c.size > offset:
            out.append(c)
    return out


def next_chunk(chunks: Sequence[Chunk], wanted: Sequence[Chunk]) -> Chunk | None:
    """The chunk of the file after the last one of ``wanted`` (pure)."""
    if not wanted:
        return None
    i = bisect.bisect_right([c.file_offset for c in chunks], wanted[-1].file_offset)
    return chunks[i] if i < len(chunks) else None


def span(group: Sequence[Chunk]) -> tuple[int, int]:
    """Blob offset and length of one merged request (pure)."""
    start = group[0].blob_offset
    return start, max(c.blob_offset + c.blob_length for c in group) - start


__all__ = ["MAX_SPAN", "next_chunk", "overlapping", "plan_spans", "span"]
