"""The shaped link: data intact, counters exact, and the shaping itself in virtual time.

Timing assertions run under trio's MockClock (``autojump_clock``), an injected clock that is
deterministic; nothing here depends on the wall clock.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from bench.link import LinkSettings, open_shaped_link
from bench.shaper import (
    Link,
    TokenBucket,
    parse_duration_ms,
    parse_rate,
    serve_shaper,
    shape_connection,
)
from content.errors import InvalidArgument


def test_parse_rate_and_delay() -> None:
    assert parse_rate("100mbit") == 100e6
    assert parse_rate("2Mbit") == 2e6
    assert parse_rate("1gbit") == 1e9
    assert parse_rate("500kbit") == 500e3
    assert parse_rate("12345") == 12345
    assert parse_duration_ms("20ms") == 20
    assert parse_duration_ms("0.5s") == 500
    assert parse_duration_ms("7") == 7
    with pytest.raises(InvalidArgument, match="fast"):
        parse_rate("fast")


def test_token_bucket_accounting_with_injected_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(1000.0, burst=100, clock=lambda: now[0])
    assert bucket.reserve(100) == 0.0          # the burst goes at once
    assert bucket.reserve(100) == pytest.approx(0.1)  # then 1000 B/s: 100 B wait 0.1 s
    assert bucket.reserve(50) == pytest.approx(0.15)  # queued behind the debt
    now[0] = 0.15
    assert bucket.tokens == pytest.approx(-150)
    assert bucket.reserve(0) == 0.0            # debt repaid exactly at 0.15 s
    now[0] = 10.0
    assert bucket.reserve(0) == 0.0
    assert bucket.tokens == 100                 # refills only up to the burst
    assert bucket.reserved == 250


def _wire(link: Link) -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream,
                               trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
    client, proxy_client = trio.testing.memory_stream_pair()
    proxy_upstream, server = trio.testing.memory_stream_pair()
    return client, proxy_client, proxy_upstream, server


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while chunk := await stream.receive_some(1 << 20):
        out += chunk
    return bytes(out)


async def _transfer(link: Link, payload: bytes, chunk: int) -> tuple[bytes, float]:
    """Send ``payload`` client → server across ``link``; return what arrived and when."""
    client, proxy_client, proxy_upstream, server = _wire(link)
    got = b""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shape_connection, proxy_client, proxy_upstream, link)

        async def send() -> None:
            for i in range(0, len(payload), chunk):
                await client.send_all(payload[i:i + chunk])
            await client.send_eof()

        nursery.start_soon(send)
        got = await _read_all(server)
        elapsed = trio.current_time() - start
        await server.aclose()
        await client.aclose()
    return got, elapsed


async def test_rate_limit_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    payload = os.urandom(1_000_000)
    link = Link.shaped(2e6, 20, burst=64 << 10)  # 2 Mbit/s = 250 kB/s, 10 ms one way
    got, elapsed = await _transfer(link, payload, 16 << 10)
    assert got == payload
    assert link.stats.bytes_up == len(payload)
    assert link.stats.bytes_down == 0
    assert link.stats.connections == 1
    assert link.up.reserved == len(payload)
    # Nothing can beat the bucket: (N - burst) / rate, plus the one-way delay of the last chunk.
    floor = (len(payload) - (64 << 10)) / 250_000 + 0.010
    assert elapsed >= floor
    assert elapsed < floor + 0.1


async def test_delay_does_not_cut_throughput(autojump_clock: trio.testing.MockClock) -> None:
    payload = os.urandom(64 * 4096)
    link = Link.shaped(1e9, 400, burst=1 << 30)  # effectively no rate limit, 200 ms one way
    got, elapsed = await _transfer(link, payload, 4096)
    assert got == payload
    assert link.stats.chunks_up >= 64 // 16  # many chunks were in flight at once…
    assert 0.2 <= elapsed < 0.3  # …so the link took one delay, not one per chunk


async def test_both_directions_counted_over_loopback() -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(1 << 16):
                await stream.send_all(data)

    payload = os.urandom(300_000)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, 0)
        port = listeners[0].socket.getsockname()[1]
        info = await nursery.start(lambda task_status: serve_shaper(
            0, "127.0.0.1", port, rate_bps=1e9, rtt_ms=0, task_status=task_status))
        stream = await trio.open_tcp_stream("127.0.0.1", info.port)
        got = bytearray()
        async with stream:
            await stream.send_all(payload)
            await stream.send_eof()
            while chunk := await stream.receive_some(1 << 16):
                got += chunk
        assert bytes(got) == payload
        assert info.link.stats.bytes_up == len(payload)
        assert info.link.stats.bytes_down == len(payload)
        assert info.link.stats.connections == 1
        nursery.cancel_scope.cancel()


async def test_shaper_process_reports_counters() -> None:
    async def serve_blob(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"x" * 123_457)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve_blob, 0)
        port = listeners[0].socket.getsockname()[1]
        async with open_shaped_link(f"127.0.0.1:{port}", LinkSettings(1e9, 1)) as link:
            host, _, lport = link.host.rpartition(":")
            for _ in range(2):
                stream = await trio.open_tcp_stream(host, int(lport))
                async with stream:
                    assert await _read_all(stream) == b"x" * 123_457
            stats = await link.stats()
        assert stats.bytes_down == 2 * 123_457
        assert stats.bytes_up == 0
        assert stats.connections == 2
        nursery.cancel_scope.cancel()
