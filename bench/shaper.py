"""A shaped link on loopback: a TCP proxy that limits bandwidth and adds latency.

This kernel has no ``netem``, so the benchmark puts its own proxy between the client under
test and the registry. Per direction the link is one token bucket shared by every
connection (as one physical link would be) followed by a fixed one-way delay of rtt/2::

    source ──receive──▶ [token bucket: wait for departure] ──▶ delay line ──send──▶ sink
                         (backpressure on the source)        (release at departure + rtt/2)

The delay line is a timestamped queue: the reader never waits for the delay, only for the
bucket, so a long link still runs at full rate (a bandwidth-delay product in flight), and
every chunk arrives exactly rtt/2 after it left the bottleneck.

Clock and sleep come from trio (``trio.current_time``/``trio.sleep_until``), so a test that
runs under ``trio.testing.MockClock`` drives the whole link in virtual time; the bucket
itself takes a plain ``clock`` callable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import trio

from content.errors import InvalidArgument

CHUNK = 64 << 10
DEFAULT_BURST = 64 << 10

_RATE = re.compile(r"^\s*([0-9.]+)\s*([kmg]?)(bit|bps|b)?(?:/s)?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*([0-9.]+)\s*(us|ms|s)?\s*$", re.IGNORECASE)
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str) -> float:
    """``100mbit`` → 1e8 bits per second (``kbit``/``mbit``/``gbit``; bare numbers are bit/s)."""
    m = _RATE.match(text)
    if not m:
        raise InvalidArgument(f"link rate {text!r}: expected e.g. 100mbit, 2mbit, 1gbit")
    return float(m.group(1)) * _SCALE[m.group(2).lower()]


def parse_duration_ms(text: str) -> float:
    """``20ms`` → 20.0; ``0.02s`` → 20.0; a bare number is milliseconds."""
    m = _TIME.match(text)
    if not m:
        raise InvalidArgument(f"link delay {text!r}: expected e.g. 20ms")
    unit = (m.group(2) or "ms").lower()
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


class TokenBucket:
    """Bytes may leave at ``rate`` per second after an initial ``burst``.

    ``reserve(n)`` takes n bytes now and answers how long the caller must wait before sending
    them. The balance may go negative (a debt), which serialises later reservations behind
    earlier ones: whatever the chunk sizes, at most ``burst + rate * t`` bytes leave in any
    interval ``t``.
    """

    def __init__(self, rate_bytes: float, burst: int = DEFAULT_BURST,
                 clock: Callable[[], float] = trio.current_time) -> None:
        if rate_bytes <= 0:
            raise InvalidArgument(f"token bucket: rate must be positive, got {rate_bytes}")
        self.rate = rate_bytes
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.reserved = 0  # bytes ever reserved: accounting tests and sanity checks

    @property
    def tokens(self) -> float:
        return self._tokens

    def reserve(self, n: int) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        self.reserved += n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(slots=True)
class LinkStats:
    """Counters of one link; ``down`` is registry → client (what a pull fetches)."""

    bytes_up: int = 0
    bytes_down: int = 0
    chunks_up: int = 0
    chunks_down: int = 0
    connections: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Link:
    """One shaped link: a bucket per direction, the one-way delay, and the counters."""

    up: TokenBucket
    down: TokenBucket
    delay: float  # seconds, one way
    stats: LinkStats = field(default_factory=LinkStats)

    @classmethod
    def shaped(cls, rate_bps: float, rtt_ms: float, *, burst: int = DEFAULT_BURST,
               clock: Callable[[], float] = trio.current_time) -> Link:
        return cls(TokenBucket(rate_bps / 8, burst, clock), TokenBucket(rate_bps / 8, burst, clock),
                   rtt_ms / 2000.0)


def _count(stats: LinkStats, downstream: bool, n: int) -> None:
    if downstream:
        stats.bytes_down += n
        stats.chunks_down += 1
    else:
        stats.bytes_up += n
        stats.chunks_up += 1


async def _release(queue: trio.MemoryReceiveChannel[tuple[float, bytes]],
                   dst: trio.abc.HalfCloseableStream, link: Link, downstream: bool) -> None:
    async with queue:
        async for release_at, data in queue:
            await trio.sleep_until(release_at)
            # Counted as released before the send, so a reader that has every byte also
            # sees the counters complete.
            _count(link.stats, downstream, len(data))
            await dst.send_all(data)
    # The source finished cleanly: pass the half-close on, as TCP would (HTTP/1.0 clients).
    await dst.send_eof()


async def _pump(src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream, link: Link,
                downstream: bool, chunk: int) -> None:
    bucket = link.down if downstream else link.up
    send, recv = trio.open_memory_channel[tuple[float, bytes]](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_release, recv, dst, link, downstream)
        async with send:
            while data := await src.receive_some(chunk):
                departs = trio.current_time() + bucket.reserve(len(data))
                await trio.sleep_until(departs)
                await send.send((departs + link.delay, bytes(data)))


async def shape_connection(client: trio.abc.HalfCloseableStream,
                           upstream: trio.abc.HalfCloseableStream, link: Link, *,
                           chunk: int = CHUNK) -> None:
    """Carry one connection across ``link`` until both directions end or either breaks."""
    link.stats.connections += 1
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, link, False, chunk)
            nursery.start_soon(_pump, upstream, client, link, True, chunk)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # a reset on either side ends the connection, as it would on a real link
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
            await upstream.aclose()


@dataclass(frozen=True, slots=True)
class ShaperInfo:
    port: int
    link: Link


async def serve_shaper(listen_port: int, upstream_host: str, upstream_port: int, *,
                       rate_bps: float, rtt_ms: float, burst: int = DEFAULT_BURST,
                       task_status: trio.TaskStatus[ShaperInfo] = trio.TASK_STATUS_IGNORED,
                       ) -> None:
    """Listen on 127.0.0.1:``listen_port`` (0 picks one) and shape every connection to the
    upstream through one :class:`Link`; ``task_status`` receives the port and the link."""
    link = Link.shaped(rate_bps, rtt_ms, burst=burst)

    async def handle(client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(upstream_host, upstream_port)
        except OSError:
            await client.aclose()  # the registry is down: the client sees a reset, as it would
            return
        await shape_connection(client, upstream, link)

    listeners = await trio.open_tcp_listeners(listen_port, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(ShaperInfo(port, link))
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
