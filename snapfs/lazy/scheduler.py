"""One fetch scheduler per process: every Range request of every lazy layer, by priority.

Three classes, highest first:

- **demand** — a read a container is blocked on (a FUSE miss);
- **startup** — a layer's startup set (landmark or profile), fetched as it is mounted;
- **background** — the rest of a layer, streamed in pieces of at most ``PIECE`` bytes until
  the layer is complete and can be materialised (``snapfs.lazy.complete``).

A demand request never queues behind another class: it takes a slot of the urgent limiter
(``[fetch] concurrency``) at once. A startup request waits while demand requests wait for a
slot. A background piece starts only while no demand or startup request is in flight or
waiting, under its own limiter (``background_concurrency``) and byte-rate budget
(``background_rate``); pieces are small, so a read that arrives while background pieces are in
flight shares the link with at most those few, never with a queue of them. All classes share
the registry client's one connection pool. Counters say how many requests and bytes each
class cost and in which order requests were issued (tests read them).

Must not verify, cache or decode anything: it moves bytes, the callers check them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from content.digest import Digest
from content.reference import Reference

log = logging.getLogger(__name__)

Priority = Literal["demand", "startup", "background"]
PRIORITIES: tuple[Priority, ...] = ("demand", "startup", "background")
PIECE = 1 << 20  # background bytes per request: a read never waits behind more than this
DEFAULT_CONCURRENCY = 8  # demand + startup requests in flight (a 20 ms link wants several)
DEFAULT_BACKGROUND_CONCURRENCY = 2  # two pieces in flight keep a 20 ms RTT link busy


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


@dataclass(slots=True)
class SchedulerStats:
    """Per class: requests issued and bytes received; ``issued`` counts requests in order."""

    by_class: dict[str, ClassStats] = field(
        default_factory=lambda: {p: ClassStats() for p in PRIORITIES})
    issued: int = 0


class FetchScheduler:
    """Range requests of all lazy layers of one process, demand first."""

    def __init__(self, source: RangeSource, *, concurrency: int = DEFAULT_CONCURRENCY,
                 background_concurrency: int = DEFAULT_BACKGROUND_CONCURRENCY,
                 background_rate: int = 0) -> None:
        self.source = source
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

    async def fetch(self, ref: Reference, digest: Digest, offset: int, length: int,
                    priority: Priority = "demand",
                    on_issue: Callable[[], None] | None = None) -> bytes:
        """``length`` bytes of the blob at ``offset`` (unverified), at ``priority``."""
        if priority == "background":
            return await self._fetch_background(ref, digest, offset, length, on_issue)
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
                return await self._issue(ref, digest, offset, length, priority, on_issue)
            finally:
                self._urgent.release()
        finally:
            self._urgent_busy -= 1
            self._notify()

    async def _fetch_background(self, ref: Reference, digest: Digest, offset: int,
                                length: int, on_issue: Callable[[], None] | None) -> bytes:
        async with self._background:
            await self._bucket.take(length)
            await self._wait_until(lambda: self._urgent_busy == 0)
            return await self._issue(ref, digest, offset, length, "background", on_issue)

    async def _issue(self, ref: Reference, digest: Digest, offset: int, length: int,
                     priority: Priority, on_issue: Callable[[], None] | None) -> bytes:
        counters = self.stats.by_class[priority]
        counters.requests += 1
        self.stats.issued += 1
        if on_issue is not None:
            on_issue()
        data = await self.source.fetch_range(ref, digest, offset, length)
        counters.bytes += len(data)
        return data

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


__all__ = ["DEFAULT_BACKGROUND_CONCURRENCY", "DEFAULT_CONCURRENCY", "PIECE", "PRIORITIES",
           "FetchScheduler", "Priority", "RangeSource", "SchedulerStats", "TokenBucket"]
