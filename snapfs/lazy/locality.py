"""Locality on a miss: an on-demand fetch takes the layer's next chunks along with it.

A program reads in bursts of neighbouring files — a module and the modules beside it, a
library and the next ones in its directory — and a layer stores them next to each other
(tar order). So when a read misses, :class:`Locality` extends the request with the chunks
that follow the missed ones in the blob, up to a *window* of compressed bytes, as long as
they are contiguous and neither cached nor in flight: the request is still one Range
request, and each neighbour it brought that is read later is a round trip saved.

The window adapts to what turns out to be read. Chunks a window brought are *pending* until
a read uses them. At the next miss the previous window is judged: if at least half of its
chunks were read, the window doubles (a walk, a burst of imports); if fewer than one in
eight, it halves (random access); in between it stays. Bounds: ``MIN_WINDOW`` ..
``MAX_WINDOW``. Hits and misses of windowed chunks are counted for ``snapfs status`` and the
metrics (``window_chunks``, ``window_hits``).

A directory is the other neighbourhood (:meth:`Locality.neighbourhood`): a program that
misses twice in one directory is usually walking it (python's imports from
``lib/python3.11/__pycache__``: 26 of the 64 misses of its start, each one round trip). At
the second miss in a directory whose files' chunks not yet local total at most
``DIR_BUDGET`` compressed bytes, the fetcher takes the whole directory (its direct regular
files) in requests of its own that no read waits for; each later miss there waits on those
flights instead of a round trip of its own. A directory is taken once. A first miss alone
takes nothing (one library out of a big directory), and a directory larger than the budget
(``/usr/lib/x86_64-linux-gnu``: 16 MB) never: the link would be busy for a guess. Its chunks
count in ``window_chunks`` and ``window_hits`` like a window's (they are not judged with the
window).

Pure bookkeeping: must not fetch, cache or verify (``snapfs.lazy.fetcher`` does, and every
windowed chunk is verified like any other before it is cached).
"""

from __future__ import annotations

import bisect
import itertools
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from content.digest import Digest
from content.lazyformat import Chunk

MIN_WINDOW = 64 << 10
START_WINDOW = 256 << 10
MAX_WINDOW = 4 << 20  # the fetcher's MAX_SPAN: a window never splits a request
DIR_BUDGET = 4 << 20  # compressed bytes a directory may cost to be taken whole
DIR_AFTER = 2  # misses in a directory before it is taken whole


class WindowCounts(Protocol):
    """Where the window counts (``snapfs.lazy.fetcher.FetchStats``: persisted with the
    layer's other counters, so they are kept in one place only)."""

    window_chunks: int  # chunks brought by windows, in all
    window_hits: int  # of those, read later


class Locality:
    """The window of one layer; ``chunks`` are the layer's unique chunks, ``counts`` where
    its hits are counted. ``start`` 0: off (a miss fetches only what is read)."""

    def __init__(self, chunks: Sequence[Chunk], counts: WindowCounts, *,
                 start: int = START_WINDOW, minimum: int = MIN_WINDOW,
                 maximum: int = MAX_WINDOW, dir_budget: int = DIR_BUDGET) -> None:
        self._by_blob = sorted(chunks, key=lambda c: c.blob_offset)
        self._starts = [c.blob_offset for c in self._by_blob]
        self.window = start
        self._min = min(minimum, start)
        self._max = maximum
        self._pending: set[Digest] = set()  # brought by a window, not read yet
        self._last: int = 0  # chunks the previous window brought
        self._counts = counts
        self.dir_budget = dir_budget
        self._dir_pending: set[Digest] = set()  # brought with a directory, not read yet
        self._dir_misses: Counter[str] = Counter()
        self._dirs_taken: set[str] = set()
        self._by_dir: dict[str, list[Chunk]] | None = None  # built at the first miss

    def used(self, chunks: Sequence[Chunk]) -> None:
        """A read used ``chunks`` (cached or not): windowed ones count as hits."""
        for c in chunks:
            if c.digest in self._pending:
                self._pending.discard(c.digest)
                self._counts.window_hits += 1
            elif c.digest in self._dir_pending:
                self._dir_pending.discard(c.digest)
                self._counts.window_hits += 1

    def neighbourhood(self, missed: Sequence[Chunk],
                      skip: Callable[[Digest], bool]) -> list[Chunk]:
        """The chunks of the directory of ``missed`` (one file's chunks a read is about to
        fetch) to fetch aside, in blob order: none unless this is the directory's
        ``DIR_AFTER``-th miss and what it still lacks (``skip``: cached or in flight) fits
        ``dir_budget`` (see the module docstring). Off with the window (``start`` 0)."""
        if not missed or not self.window or not self.dir_budget:
            return []
        where = posixpath.dirname(missed[0].path)
        if where in self._dirs_taken:
            return []
        self._dir_misses[where] += 1
        if self._dir_misses[where] < DIR_AFTER:
            return []
        self._dirs_taken.add(where)
        if self._by_dir is None:
            by_dir: defaultdict[str, list[Chunk]] = defaultdict(list)
            for c in self._by_blob:
                by_dir[posixpath.dirname(c.path)].append(c)
            self._by_dir = dict(by_dir)
        have = {c.digest for c in missed}
        out = [c for c in self._by_dir.get(where, ())
               if c.digest not in have and not skip(c.digest)]
        if not out or sum(c.blob_length for c in out) > self.dir_budget:
            return []
        self._dir_pending.update(c.digest for c in out)
        self._counts.window_chunks += len(out)
        return out

    def extend(self, missed: Sequence[Chunk], skip: Callable[[Digest], bool]) -> list[Chunk]:
        """The neighbours to fetch with ``missed`` (chunks a read is about to fetch): the
        chunks after the last of them in the blob, contiguous, for which ``skip`` (cached or
        in flight) is false, up to the window. Adapts the window first."""
        if not missed or not self.window:
            return []
        self._adapt()
        last = max(missed, key=lambda c: c.blob_offset)
        end = last.blob_offset + last.blob_length
        wanted = {c.digest for c in missed}
        out: list[Chunk] = []
        budget = self.window
        i = bisect.bisect_right(self._starts, last.blob_offset)
        for c in self._by_blob[i:]:
            if c.blob_offset != end or c.blob_length > budget:
                break  # a hole (or the window is full): the request would not be one span
            if c.digest in wanted:
                end += c.blob_length
                continue
            if skip(c.digest):
                break
            out.append(c)
            budget -= c.blob_length
            end += c.blob_length
        self._pending.update(c.digest for c in out)
        self._last = len(out)
        self._counts.window_chunks += len(out)
        return out

    def between(self, wanted: Sequence[Chunk], max_gap: int) -> list[Chunk]:
        """The chunks lying in the holes, of at most ``max_gap`` bytes, between ``wanted``
        chunks in the blob: fetched with them, a scattered set (a startup profile's) needs
        fewer requests (``plan_spans`` merges only what touches). Pure."""
        out: list[Chunk] = []
        have = {c.digest for c in wanted}
        ordered = sorted(wanted, key=lambda c: c.blob_offset)
        for a, b in itertools.pairwise(ordered):
            end = a.blob_offset + a.blob_length
            if not 0 < b.blob_offset - end <= max_gap:
                continue
            i = bisect.bisect_left(self._starts, end)
            for c in self._by_blob[i:]:
                if c.blob_offset >= b.blob_offset:
                    break
                if c.digest not in have:
                    have.add(c.digest)
                    out.append(c)
        return out

    def _adapt(self) -> None:
        if not self._last:
            return
        unread = len(self._pending)  # the previous window's chunks nobody read yet
        read = self._last - min(unread, self._last)
        if 2 * read >= self._last:
            self.window = min(self.window * 2, self._max)
        elif 8 * read < self._last:
            self.window = max(self.window // 2, self._min)
        # Judged once: what it brought and nobody read is no longer pending.
        self._pending.clear()

    def forget(self, digests: set[Digest]) -> None:
        """Chunks that left the cache: a later read of them is no hit."""
        self._pending -= digests
        self._dir_pending -= digests


__all__ = ["DIR_AFTER", "DIR_BUDGET", "MAX_WINDOW", "MIN_WINDOW", "START_WINDOW", "Locality",
           "WindowCounts"]
