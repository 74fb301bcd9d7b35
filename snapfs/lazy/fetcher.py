"""Fetching a lazy layer's chunks on demand: Range requests, verification, the chunk cache.

One :class:`LayerFetcher` per mounted lazy layer. ``read(path, offset, size)`` finds the chunks
that overlap the request, serves the cached ones from the shared :class:`ChunkCache`, and
fetches the rest:

- neighbouring missing chunks are merged into one Range request (``plan_spans``, capped at
  ``max_span`` bytes), so reading a file of many chunks costs one round trip;
- every chunk has at most ONE fetch in flight, shared by every reader that needs it (keyed by
  the chunk's digest, so two identical chunks in one layer are fetched once too);
- requests run under a ``CapacityLimiter``; retries and backoff are the registry client's;
- each chunk is decompressed and verified (``decode_chunk``, in a worker thread) before it is
  served or cached. A chunk that fails verification is never served: the read raises
  ``DigestMismatch`` (EIO through FUSE) and the error is logged with the layer, the file, the
  blob offset and both digests; other chunks stay readable.

A reader that is cancelled while it owns a fetch abandons it; the readers waiting on that fetch
see it end without data and start their own.

A read that misses takes the layer's next chunks along in the same request, up to an
adaptive window (``snapfs.lazy.locality``): neighbouring files are usually read together.
Given a nursery, a second miss in a small directory also fetches the rest of that directory
in requests of their own, which the read does not wait for (later reads wait on their flights).

Every request is counted by its cause (``FetchStats``): ``demand`` (a read) or ``prefetch``
(``prefetch``: a startup set, at startup priority). The background completion streams the
whole blob itself (``snapfs.lazy.complete``), not through here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from content.chunkcache import ChunkCache
from content.chunkedtar import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from content.digest import Digest
from content.errors import ContentError, DigestMismatch, Internal, NotFound
from content.lazyformat import Chunk, LazyLayer, decode_chunk
from content.reference import Reference
from snapfs.lazy.locality import START_WINDOW, Locality
from snapfs.lazy.scheduler import FetchScheduler, Priority, RangeSource
from snapfs.lazy.spans import MAX_SPAN, next_chunk, overlapping, plan_spans, span

log = logging.getLogger(__name__)

# "neighbour": a directory a miss takes aside (``Locality.neighbourhood``): caused by reads,
# counted as demand, but sent at startup priority so that no read's own request waits on it.
_PRIORITY: dict[str, Priority] = {"demand": "demand", "prefetch": "startup",
                                  "neighbour": "startup", "background": "background"}

ASIDE_GAP = 64 << 10  # holes a directory's aside requests fetch through (~5 ms at 100 Mbit/s)
_ATTEMPTS = 4  # abandoned shared fetches a read re-tries before giving up
DECODE_LIMITER = trio.CapacityLimiter(2)  # decompression + hashing: CPU-bound threads
CACHE_LIMITER = trio.CapacityLimiter(8)  # small local-disk reads and writes


@dataclass(slots=True)
class FetchStats:
    """Per-layer counters (tests, metrics and ``snapfs status`` read them)."""

    requests: int = 0  # Range requests sent
    bytes_fetched: int = 0  # compressed bytes received
    chunks_fetched: int = 0  # chunks decoded and verified from the registry
    cache_hits: int = 0  # chunk lookups a read served from the cache
    cache_misses: int = 0  # chunk lookups a read had to fetch (or wait for)
    verify_failures: int = 0
    bytes_served: int = 0  # uncompressed bytes returned by ``read``
    demand_requests: int = 0  # of ``requests``: caused by reads
    demand_bytes: int = 0
    prefetch_requests: int = 0  # caused by a startup set (landmark or profile)
    prefetch_bytes: int = 0
    background_requests: int = 0  # caused by the background fetch
    background_bytes: int = 0
    window_chunks: int = 0  # neighbours a miss's request brought along (locality window)
    window_hits: int = 0  # of those, read later
    window_fetched_bytes: int = 0  # compressed bytes of those


@dataclass(eq=False, slots=True)
class _Flight:
    """One in-flight chunk fetch. Ends with ``data``, ``error``, or neither (abandoned)."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: ContentError | None = None


class LayerFetcher:
    """Reads files of one lazy layer, fetching and verifying chunks on demand."""

    def __init__(self, source: RangeSource, ref: Reference, blob: Digest, layer: LazyLayer,
                 cache: ChunkCache, *, scheduler: FetchScheduler | None = None,
                 max_span: int = MAX_SPAN, window: int = START_WINDOW,
                 nursery: trio.Nursery | None = None) -> None:
        self.source = source
        self.ref = ref
        self.blob = blob
        self.layer = layer
        self.cache = cache
        self.stats = FetchStats()
        # One per process in the daemon (shared by every layer); a private one otherwise.
        self._scheduler = scheduler or FetchScheduler(source)
        # A gzip-index layer's chunks share their span's range: one request must hold it.
        self._max_span = max(max_span, layer.fetch_unit)
        self._flights: dict[Digest, _Flight] = {}
        self._cached: set[Digest] = set()  # digests known to be in the cache
        # Set once the layer is materialised: fetches still in flight serve their readers
        # from memory but cache nothing (the layer is not to be stored twice).
        self.retired = False
        # Each unique chunk once (hardlinks share their target's list), for local_bytes().
        self._unique = list({c.digest: c for cs in layer.files.values() for c in cs}.values())
        self._regular = [layer.files[e.name] for e in layer.toc.entries
                         if e.type == "reg" and e.name in layer.files
                         and e.name not in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)]
        self.total_bytes = sum(c.size for cs in self._regular for c in cs)
        self.locality = Locality(self._unique, self.stats, start=window)
        # Where a directory taken aside is fetched (None: directories are not taken).
        self._nursery = nursery

    @property
    def what(self) -> str:
        return f"layer {self.blob.short()} of {self.ref}"

    # -- reading ------------------------------------------------------------------------------

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the regular file ``path`` (short at its end)."""
        chunks = self.layer.files.get(path)
        if chunks is None:
            raise NotFound(f"{self.what}: no regular file {path!r}")
        wanted = overlapping(chunks, offset, size)
        end = offset + size
        ahead = next_chunk(chunks, wanted)
        if ahead is not None and ahead.digest not in self._cached:
            ahead = None  # only local chunks are worth warming; the rest waits for a read
        self.locality.used(wanted)
        missed = [c for c in wanted if c.digest not in self._cached
                  and c.digest not in self._flights]
        # While the background fetch streams the blob, it brings the neighbours anyway (and
        # the layer is local soon): a window would only take the link from it.
        local = not missed or bool(self._scheduler.background_active)
        extra = [] if local else self.locality.extend(
            missed, lambda d: d in self._cached or d in self._flights)
        if not local and self._nursery is not None:
            taken = {c.digest for c in extra}
            around = self.locality.neighbourhood(
                missed, lambda d: d in self._cached or d in self._flights or d in taken)
            if around:
                self._nursery.start_soon(self._fetch_aside, around)
        whole: dict[Digest, bytes] = {}  # chunks that came through memory (fetched now)
        sliced: dict[Digest, bytes] = {}  # the wanted slice of chunks read from the cache
        for _ in range(_ATTEMPTS):
            whole.update(await self._obtain(wanted, keep=True, extra=extra))
            extra = []
            rest = [c for c in wanted if c.digest not in whole and c.digest not in sliced]
            if rest:
                sliced.update(await trio.to_thread.run_sync(
                    self._read_cached, rest, offset, end, ahead, limiter=CACHE_LIMITER))
                # Gone from the cache (evicted, deleted): the next attempt fetches them.
                self._cached -= {c.digest for c in rest if c.digest not in sliced}
            if all(c.digest in whole or c.digest in sliced for c in wanted):
                break
        else:
            raise Internal(f"{self.what}: /{path} at {offset}: chunks vanished from the cache")
        parts = []
        for c in wanted:
            if c.digest in whole:
                lo = max(offset - c.file_offset, 0)
                parts.append(whole[c.digest][lo:min(end - c.file_offset, c.size)])
            else:
                parts.append(sliced[c.digest])
        out = b"".join(parts)
        self.stats.bytes_served += len(out)
        return out

    def _read_cached(self, chunks: Sequence[Chunk], offset: int, end: int,
                     ahead: Chunk | None = None) -> dict[Digest, bytes]:
        """The slices of ``chunks`` that ``[offset, end)`` covers, from the cache (blocking).
        A chunk that is no longer cached is left out (the caller fetches it again).
        ``ahead``: the file's next chunk, to be read from disk in the background now, so a
        sequential reader finds it in memory (after a page-cache drop, each chunk would
        otherwise cost a synchronous disk read when the reader reaches it)."""
        if ahead is not None:
            self.cache.advise(ahead.digest)
        out: dict[Digest, bytes] = {}
        for c in chunks:
            lo = max(offset - c.file_offset, 0)
            hi = min(end - c.file_offset, c.size)
            data = self.cache.read(c.digest, lo, hi - lo)
            if data is not None and len(data) == hi - lo:
                out[c.digest] = data
        return out

    def local_bytes(self) -> int:
        """Uncompressed bytes of the layer's files whose chunks are known to be cached."""
        return sum(c.size for cs in self._regular for c in cs if c.digest in self._cached)

    async def refresh_cached(self) -> int:
        """Learn which chunks are already in the (shared) cache; returns how many are missing."""
        unknown = [c for c in self._unique if c.digest not in self._cached]
        present = await trio.to_thread.run_sync(
            self.cache.which, {c.digest for c in unknown}, limiter=CACHE_LIMITER)
        self._cached |= present
        return len(unknown) - len(present)

    def _ordered(self, paths: Sequence[str]) -> list[Chunk]:
        order: list[Chunk] = []
        seen: set[Digest] = set()
        for path in paths:
            for c in self.layer.files.get(path, []):
                if c.digest not in seen:
                    seen.add(c.digest)
                    order.append(c)
        return order

    async def prefetch(self, paths: Sequence[str], *, bridge: int = 0) -> None:
        """Make the chunks of ``paths`` local now, at startup priority (a startup set); with
        those in holes of at most ``bridge`` bytes between them, to share requests."""
        await self.refresh_cached()
        wanted = self._ordered(paths)
        await self._obtain([*wanted, *self.locality.between(wanted, bridge)], keep=False,
                           cause="prefetch")

    async def _fetch_aside(self, chunks: Sequence[Chunk]) -> None:
        """A directory taken aside: its flights carry any error to the reads waiting on them."""
        try:
            await self._obtain([], keep=False, cause="neighbour", extra=chunks)
        except ContentError as exc:
            log.debug("%s: fetching a directory's %d chunk(s) aside failed: %s", self.what,
                      len(chunks), exc)

    # -- the shared fetches ---------------------------------------------------------------------

    async def _obtain(self, chunks: Sequence[Chunk], *, keep: bool, cause: str = "demand",
                      extra: Sequence[Chunk] = ()) -> dict[Digest, bytes]:
        """Make ``chunks`` local. Returns the ones that arrived in memory on the way (whole
        chunks); the others are in the cache (or were abandoned: the caller retries).
        ``extra``: neighbours to fetch in the same requests, not waited for separately."""
        unique = list({c.digest: c for c in chunks}.values())
        unknown = [c for c in [*unique, *extra]
                   if c.digest not in self._cached and c.digest not in self._flights]
        if unknown:
            present = await trio.to_thread.run_sync(
                lambda: {c.digest for c in unknown if self.cache.has(c.digest)},
                limiter=CACHE_LIMITER)
            self._cached |= present
        # Decide, with no await until the flights are registered: whoever registers a
        # chunk's flight owns its fetch; everyone else waits on it.
        mine: list[Chunk] = []
        theirs: list[tuple[Chunk, _Flight]] = []
        for c in unique:
            flight = self._flights.get(c.digest)
            if flight is not None:
                theirs.append((c, flight))
            elif c.digest in self._cached:
                self.stats.cache_hits += 1
            else:
                self._flights[c.digest] = _Flight()
                mine.append(c)
        self.stats.cache_misses += len(mine) + len(theirs)
        waited = list(mine)
        for c in extra:
            if c.digest not in self._cached and c.digest not in self._flights:
                self._flights[c.digest] = _Flight()
                mine.append(c)
                self.stats.window_fetched_bytes += c.blob_length
        for sib in [s for w in waited for s in self.layer.units.get(w.blob_offset, ())
                    if s.blob_length <= w.blob_length]:
            # The parts of a gzip-index span that this fetch inflates anyway: landed with it.
            if sib.digest not in self._cached and sib.digest not in self._flights:
                self._flights[sib.digest] = _Flight()
                mine.append(sib)
        flights = {c.digest: self._flights[c.digest] for c in mine}
        if mine:
            async with trio.open_nursery() as nursery:
                # A directory aside lies between other directories' files and chunks
                # already here: small holes are fetched through rather than split on.
                gap = ASIDE_GAP if cause == "neighbour" else 0
                for group in plan_spans(mine, max_span=self._max_span, max_gap=gap):
                    nursery.start_soon(self._fetch_group, group, flights, cause)
        out: dict[Digest, bytes] = {}
        for c, flight in [*((c, flights[c.digest]) for c in waited), *theirs]:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.data is not None and keep:
                out[c.digest] = flight.data
        return out

    async def _fetch_group(self, group: list[Chunk], flights: dict[Digest, _Flight],
                           cause: str = "demand") -> None:
        start, length = span(group)
        log.debug("%s: %s request at %d+%d: %d chunk(s) from /%s", self.what, cause, start,
                  length, len(group), group[0].path)
        try:
            try:
                raw = await self._scheduler.fetch(
                    self.ref, self.blob, start, length, _PRIORITY[cause],
                    on_issue=lambda: self.count(cause, 1, 0))
                self.count(cause, 0, len(raw))
            except ContentError as exc:
                # Debug: the failed read itself is logged once, naming registry, repository
                # and blob (snapfs.lazy.view).
                log.debug("%s: fetching %d chunk(s) at blob offset %d+%d failed: %s",
                          self.what, len(group), start, length, exc)
                for c in group:
                    flights[c.digest].error = exc
                return
            for c in group:
                await self._land(c, raw[c.blob_offset - start:c.blob_offset - start
                                        + c.blob_length], flights[c.digest])
        finally:
            for c in group:
                # Unfinished flights (cancelled) end without data: waiters start their own.
                flights[c.digest].done.set()
                if self._flights.get(c.digest) is flights[c.digest]:
                    del self._flights[c.digest]

    def forget_cached(self, digests: set[Digest]) -> None:
        """Chunks the caller removed from the cache (a materialised layer's)."""
        self._cached -= digests
        self.locality.forget(digests)

    def count(self, cause: str, requests: int, nbytes: int) -> None:
        """Count requests and bytes against ``cause`` (demand, prefetch or background)."""
        st = self.stats
        st.requests += requests
        st.bytes_fetched += nbytes
        if cause == "background":
            st.background_requests += requests
            st.background_bytes += nbytes
        elif cause == "prefetch":
            st.prefetch_requests += requests
            st.prefetch_bytes += nbytes
        else:
            st.demand_requests += requests
            st.demand_bytes += nbytes

    async def _land(self, c: Chunk, raw: bytes, flight: _Flight) -> None:
        """Decode, verify and cache one fetched chunk; the outcome goes into ``flight``."""
        try:
            data = await trio.to_thread.run_sync(decode_chunk, self.layer, c, raw,
                                                 limiter=DECODE_LIMITER)
        except ContentError as exc:
            self.stats.verify_failures += 1
            log.error("%s: chunk of /%s at file offset %d (blob offset %d, %d bytes) failed "
                      "verification, not served: expected %s: %s", self.what, c.path,
                      c.file_offset, c.blob_offset, c.blob_length, c.digest, exc)
            flight.error = exc if isinstance(exc, DigestMismatch) else DigestMismatch(
                f"{self.what}: /{c.path} at {c.file_offset}", str(c.digest), str(exc))
            return
        self.stats.chunks_fetched += 1
        flight.data = data
        # Its readers go on now, from memory: not after the cache write, nor after the rest
        # of the request's chunks (a window of 30 is 60 thread hops). The flight stays
        # registered until cached, so a reader arriving meanwhile takes the data from it.
        flight.done.set()
        if self.retired:
            return
        try:
            await trio.to_thread.run_sync(lambda: self.cache.put(c.digest, data, verified=True),
                                          limiter=CACHE_LIMITER)
            self._cached.add(c.digest)
        except OSError as exc:
            # Served from memory this time; the next read fetches it again.
            log.warning("%s: caching chunk %s failed: %s", self.what, c.digest.short(), exc)


__all__ = ["FetchStats", "LayerFetcher", "RangeSource", "overlapping", "plan_spans"]
