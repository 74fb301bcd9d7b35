"""FetchScheduler's background hold-off, on trio's virtual clock (order of requests, not time):
after a mount a background piece waits for a pause in a chain of on-demand reads; once the
start-up window is over it goes out beside them."""

from __future__ import annotations

import trio
import trio.testing

from content.digest import Digest, digest_bytes
from content.reference import Reference, parse_reference
from snapfs.lazy.scheduler import FetchScheduler

REF = parse_reference("127.0.0.1:5000/test/img:1")
BLOB = digest_bytes(b"blob")


class Recording:
    """A source answering after ``rtt`` virtual seconds, remembering the order of requests."""

    def __init__(self, rtt: float = 0.02) -> None:
        self.rtt = rtt
        self.order: list[str] = []

    async def fetch_range(self, ref: Reference, digest: Digest, offset: int,
                          length: int) -> bytes:
        self.order.append("bg" if offset >= 1000 else "demand")
        await trio.sleep(self.rtt)
        return b"x" * length


async def _chain(sched: FetchScheduler, n: int, gap: float) -> None:
    """A starting program: a miss, a little work, the next miss."""
    for i in range(n):
        await sched.fetch(REF, BLOB, i, 1, "demand")
        await trio.sleep(gap)


def _run(body: object) -> None:
    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_background_waits_for_a_pause_in_a_start_up_chain() -> None:
    async def body() -> None:
        source = Recording()
        sched = FetchScheduler(source, background_pause=0.3, background_hold=5.0)
        sched.touch()  # a layer was mounted
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_chain, sched, 20, 0.01)  # ~0.6 s of reads, gaps of 10 ms
            await trio.sleep(0.001)
            await sched.fetch(REF, BLOB, 1000, 1, "background")
        assert source.order == ["demand"] * 20 + ["bg"]

    _run(body)


def test_past_the_start_up_window_background_goes_beside_a_bulk_reader() -> None:
    async def body() -> None:
        source = Recording()
        sched = FetchScheduler(source, background_pause=0.3, background_hold=1.0)
        sched.touch()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_chain, sched, 200, 0.01)  # a walk: ~6 s without a pause
            await trio.sleep(0.001)
            await sched.fetch(REF, BLOB, 1000, 1, "background")
            assert 20 <= source.order.index("bg") < 60  # after ~1 s, not after the walk
            nursery.cancel_scope.cancel()

    _run(body)


def test_without_a_mount_background_is_not_held() -> None:
    async def body() -> None:
        source = Recording()
        sched = FetchScheduler(source)
        await sched.fetch(REF, BLOB, 1000, 1, "background")
        assert source.order == ["bg"]

    _run(body)


def test_a_bulk_reader_ends_the_hold_before_its_window_is_over() -> None:
    async def body() -> None:
        source = Recording()
        sched = FetchScheduler(source, background_pause=0.3, background_hold=60.0,
                               bulk_demand=64)
        sched.touch()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_chain, sched, 200, 0.01)  # no pause, far past 64 misses
            await trio.sleep(0.001)
            await sched.fetch(REF, BLOB, 1000, 1, "background")
            # After the 64th miss, not after the 60 s window (nor the walk's end).
            assert 64 <= source.order.index("bg") <= 66
            nursery.cancel_scope.cancel()

    _run(body)
