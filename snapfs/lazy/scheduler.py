"""One fetch scheduler per process: every Range request of every lazy layer, by priority.

Three classes, highest first:

- **demand** — a read a container is blocked on (a FUSE miss);
- **startup** — a layer's startup set (landmark or profile), fetched as it is mounted;
- **background** — the rest of a layer, streamed in pieces of at most ``PIECE`` bytes until
  the layer is complete and can be materialised (``snapfs.lazy.complete``).

A program starting up reads in a serial chain — a miss, a few milliseconds of work, the next
miss — so "no demand request in flight" is true between every two of them, and a background
piece started in such a gap delays the next miss by its transfer. So for ``background_hold``
seconds after a layer is mounted (its container is starting), background pieces go out only
once no urgent request has ended for ``background_pause`` seconds (the program computes, or
is done); stargz-snapshotter keeps its background fetch still for 5 s after a mount for the
same reason. Past that window they go out beside the demand requests: a program still
reading then is a bulk reader (a walk of /usr, a copy), served best by completing the layer
(measured: holding background off for every burst of reads made such a walk 1.7 times slower).
A bulk reader is also recognised sooner: ``bulk_demand`` on-demand requests since the mount
end the window at once (a starting program makes a few dozen; python's start 41, a walk of
/usr hundreds in its first seconds).

Each byte crosses the link once: while a blob is spooled (``snapfs.lazy.spool``, opened for a
layer on its way to local), every range fetched for it is kept there, and a request is
answered from the spool as far as it is covered, only its gaps going to the registry.

Must not verify or decode anything: it moves bytes, the callers check them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from content.digest import Digest
from content.errors import ContentError
from content.reference import Reference
from snapfs.lazy.spool import BlobSpool

log = logging.getLogger(__name__)

Priority = Literal["demand", "startup", "background"]
PRIORITIES: tuple[Priority, ...] = ("demand", "startup", "background")
PIECE = 1 << 20  # background bytes per request: a read never waits behind more than this
DEFAULT_CONCURRENCY = 8  # demand + startup requests in flight (a 20 ms link wants several)
DEFAULT_BACKGROUND_CONCURRENCY = 2  # two pieces in flight keep a 20 ms RTT link busy
DEFAULT_BACKGROUND_PAUSE = 0.3  # seconds of no urgent request before a background piece
DEFAULT_BACKGROUND_HOLD = 5.0  # seconds after a mount in which background yields to pauses
DEFAULT_BULK_DEMAND = 64  # on-demand requests since a mount that end the hold (a bulk reader)
SPOOL_BRIDGE = 16 << 10  # spooled stretches a request's gaps fetch through (~1 ms of link)


class RangeSource(Protocol):
    """Where a layer's compressed bytes come from (``content.registry.Registry``)."""

    async def fetch_range(self, ref: Reference, digest: Digest, offset: int,
                          length: int) -> bytes: ...


class TokenBucket:
    """A byte-rate limit: ``take(n)`` waits until ``n`` bytes may be sent at ``rate`` bytes/s.

    Requests larger than the burst go into debt (a 4 MiB span under a 1 MB/s limit is sent,
    and the next waits four seconds), so any request size works. Callers are served in the
    order they call ``take``. ``rate`` 0 = unlimited.
    """

    def __init__(self, rate: float, *, burst: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self._clock = clock or trio.current_time
        self._tokens = self.burst
        self._stamp: float | None = None

    def reserve(self, n: int, now: float) -> float:
        """Claim ``n`` bytes at time ``now``; returns how long to wait before sending. Pure
        arithmetic on the bucket's state (unit-testable without a clock)."""
        if self.rate <= 0:
            return 0.0
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, n: int) -> None:
        delay = self.reserve(n, self._clock())
        if delay > 0:
            await trio.sleep(delay)


@dataclass(slots=True)
class ClassStats:
    requests: int = 0
    bytes: int = 0
    spooled: int = 0  # bytes answered from the spool instead of the link


@dataclass(slots=True)
class SchedulerStats:
    """Per class: requests issued and bytes received; ``issued`` counts requests in order."""

    by_class: dict[str, ClassStats] = field(
        default_factory=lambda: {p: ClassStats() for p in PRIORITIES})
    issued: int = 0


@dataclass(frozen=True, slots=True)
class _Hooks:
    on_issue: Callable[[], None] | None
    on_bytes: Callable[[int], None] | None


class FetchScheduler:
    """Range requests of all lazy layers of one process, demand first."""

    def __init__(self, source: RangeSource, *, concurrency: int = DEFAULT_CONCURRENCY,
                 background_concurrency: int = DEFAULT_BACKGROUND_CONCURRENCY,
                 background_rate: int = 0,
                 background_pause: float = DEFAULT_BACKGROUND_PAUSE,
                 background_hold: float = DEFAULT_BACKGROUND_HOLD,
                 bulk_demand: int = DEFAULT_BULK_DEMAND,
                 spool: BlobSpool | None = None) -> None:
        self.source = source
        self.spool = spool
        self._pause = background_pause
        self._hold = background_hold
        self._bulk = bulk_demand
        self._demand_since_mount = 0
        self._urgent_ended = -math.inf  # when the last urgent request ended (trio clock)
        self._mounted = -math.inf  # when a layer was last mounted (touch)
        self.background_active = 0  # background pieces in flight (the fetchers look)
        self.stats = SchedulerStats()
        self._urgent = trio.CapacityLimiter(concurrency)
        self._background = trio.CapacityLimiter(background_concurrency)
        self._bucket = TokenBucket(background_rate, burst=max(background_rate, PIECE))
        self._demand_waiting = 0
        self._urgent_busy = 0  # demand + startup requests waiting or in flight
        self._changed = trio.Event()

    @property
    def urgent_busy(self) -> int:
        return self._urgent_busy

    def touch(self) -> None:
        """A layer was mounted: its container starts next, so background pieces hold off
        (see the module docstring) for the next ``background_hold`` seconds."""
        self._mounted = trio.current_time()
        self._demand_since_mount = 0
        self._notify()

    async def fetch(self, ref: Reference, digest: Digest, offset: int, length: int,
                    priority: Priority = "demand",
                    on_issue: Callable[[], None] | None = None,
                    on_bytes: Callable[[int], None] | None = None) -> bytes:
        """``length`` bytes of the blob at ``offset`` (unverified), at ``priority``;
        ``on_issue`` is called as each request goes out, ``on_bytes`` with the bytes each
        brought over the link (less than ``length`` when the spool held some)."""
        if priority == "demand":
            self._demand_since_mount += 1
        if self.spool is not None and self.spool.holds(digest):
            return await self._fetch_spooled(self.spool, ref, digest, offset, length,
                                             priority, _Hooks(on_issue, on_bytes))
        return await self._fetch_link(ref, digest, offset, length, priority,
                                      _Hooks(on_issue, on_bytes))

    async def _fetch_spooled(self, spool: BlobSpool, ref: Reference, digest: Digest,
                             offset: int, length: int, priority: Priority,
                             hooks: _Hooks) -> bytes:
        """From the spool as far as it covers the range; its gaps from the link (and into
        the spool)."""
        gaps = bridge(spool.missing(digest, offset, length), SPOOL_BRIDGE)
        if gaps == [(offset, offset + length)]:
            data = await self._fetch_link(ref, digest, offset, length, priority, hooks)
            await spool.write(digest, offset, data)
            return data
        errors: list[ContentError] = []

        async def fill(start: int, end: int) -> None:
            try:
                got = await self._fetch_link(ref, digest, start, end - start, priority,
                                             hooks)
            except ContentError as exc:
                errors.append(exc)
                return
            await spool.write(digest, start, got)

        async with trio.open_nursery() as nursery:
            for start, end in gaps:
                nursery.start_soon(fill, start, end)
        if errors:
            raise errors[0]
        kept = await spool.read(digest, offset, length)
        if kept is None:  # the spool closed meanwhile (the layer is local): ask the link
            return await self._fetch_link(ref, digest, offset, length, priority, hooks)
        self.stats.by_class[priority].spooled += length - sum(e - s for s, e in gaps)
        return kept

    async def _fetch_link(self, ref: Reference, digest: Digest, offset: int, length: int,
                          priority: Priority, hooks: _Hooks) -> bytes:
        if priority == "background":
            return await self._fetch_background(ref, digest, offset, length, hooks)
        self._urgent_busy += 1
        try:
            if priority == "demand":
                self._demand_waiting += 1
                try:
                    await self._urgent.acquire()
                finally:
                    self._demand_waiting -= 1
                    self._notify()
            else:
                await self._wait_until(lambda: self._demand_waiting == 0)
                await self._urgent.acquire()
            try:
                return await self._issue(ref, digest, offset, length, priority, hooks)
            finally:
                self._urgent.release()
        finally:
            self._urgent_busy -= 1
            self._urgent_ended = trio.current_time()
            self._notify()

    async def _fetch_background(self, ref: Reference, digest: Digest, offset: int,
                                length: int, hooks: _Hooks) -> bytes:
        async with self._background:
            await self._bucket.take(length)
            await self._hold_off()
            self.background_active += 1
            try:
                return await self._issue(ref, digest, offset, length, "background", hooks)
            finally:
                self.background_active -= 1

    async def _hold_off(self) -> None:
        """Until a background piece may go out: outside the start-up window, or the urgent
        requests paused within it."""
        while True:
            now = trio.current_time()
            window = self._mounted + self._hold - now
            quiet = math.inf if self._urgent_busy else self._urgent_ended + self._pause - now
            if window <= 0 or quiet <= 0 or self._demand_since_mount >= self._bulk:
                return
            with trio.move_on_after(min(quiet, window)):  # or sooner: a request began or ended
                await self._changed.wait()

    async def _issue(self, ref: Reference, digest: Digest, offset: int, length: int,
                     priority: Priority, hooks: _Hooks) -> bytes:
        counters = self.stats.by_class[priority]
        counters.requests += 1
        self.stats.issued += 1
        if hooks.on_issue is not None:
            hooks.on_issue()
        data = await self.source.fetch_range(ref, digest, offset, length)
        counters.bytes += len(data)
        if hooks.on_bytes is not None:
            hooks.on_bytes(len(data))
        return data

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def bridge(gaps: list[tuple[int, int]], through: int) -> list[tuple[int, int]]:
    """``gaps`` with those at most ``through`` bytes apart joined: one request rather than
    two round trips for a small stretch the spool already holds (pure)."""
    out: list[tuple[int, int]] = []
    for start, end in gaps:
        if out and start - out[-1][1] <= through:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


__all__ = [
    "DEFAULT_BACKGROUND_CONCURRENCY",
    "DEFAULT_BACKGROUND_HOLD",
    "DEFAULT_BACKGROUND_PAUSE",
    "DEFAULT_BULK_DEMAND",
    "DEFAULT_CONCURRENCY",
    "PIECE",
    "PRIORITIES",
    "FetchScheduler",
    "Priority",
    "RangeSource",
    "SchedulerStats",
    "TokenBucket",
    "bridge",
]
