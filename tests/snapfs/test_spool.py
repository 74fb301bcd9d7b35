"""Each compressed byte crosses the link once while a layer completes (snapfs.lazy.spool): the
range bookkeeping, the scheduler answering from the spool (bytes reaching an in-memory
source) and the completion reading ahead.
"""

from __future__ import annotations

import random
from pathlib import Path

import trio

from content.digest import Digest, digest_bytes
from content.reference import Reference, parse_reference
from snapfs.lazy.readahead import read_ahead
from snapfs.lazy.scheduler import FetchScheduler, bridge
from snapfs.lazy.spool import BlobSpool, Ranges

REF = parse_reference("127.0.0.1:1/x/y:1")
BLOB = bytes(random.Random(7).randbytes(1 << 16))
DIGEST = digest_bytes(BLOB)


def test_ranges_merge_and_report_gaps() -> None:
    r = Ranges()
    r.add(10, 20)
    r.add(30, 40)
    assert r.missing(0, 50) == [(0, 10), (20, 30), (40, 50)]
    r.add(15, 35)  # bridges both
    assert r.missing(0, 50) == [(0, 10), (40, 50)]
    assert r.missing(12, 38) == []
    r.add(40, 45)  # touching: merged
    assert r.missing(10, 45) == [] and r.covered() == 35
    assert bridge([(0, 10), (15, 20), (100, 110)], 5) == [(0, 20), (100, 110)]


class Counting:
    """An in-memory blob source that records every range it is asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    async def fetch_range(self, ref: Reference, digest: Digest, offset: int,
                          length: int) -> bytes:
        self.asked.append((offset, length))
        await trio.sleep(0.001)
        return BLOB[offset:offset + length]


async def test_a_spooled_blob_is_fetched_once_whatever_asks_for_it(tmp_path: Path) -> None:
    source = Counting()
    spool = BlobSpool(tmp_path)
    sched = FetchScheduler(source, spool=spool)
    spool.open(DIGEST)
    try:
        assert await sched.fetch(REF, DIGEST, 1000, 20000, "demand") == BLOB[1000:21000]
        assert await sched.fetch(REF, DIGEST, 40000, 20000, "startup") == BLOB[40000:60000]
        # The stream asks for everything: only what readers did not fetch goes out.
        got = await sched.fetch(REF, DIGEST, 0, len(BLOB), "background")
        assert got == BLOB
        assert sorted(source.asked) == [(0, 1000), (1000, 20000), (21000, 19000),
                                        (40000, 20000), (60000, len(BLOB) - 60000)]
        # A reader behind the stream: no request at all.
        assert await sched.fetch(REF, DIGEST, 5000, 7000, "demand") == BLOB[5000:12000]
        assert len(source.asked) == 5
        assert sum(n for _, n in source.asked) == len(BLOB)  # each byte once
        assert sched.stats.by_class["demand"].spooled == 7000
        assert sched.stats.by_class["background"].spooled == 40000
    finally:
        spool.close(DIGEST)
    assert list(tmp_path.iterdir()) == []  # an anonymous file: nothing left behind
    # Closed: requests go to the link again (the layer is local; nothing is kept).
    await sched.fetch(REF, DIGEST, 0, 10, "demand")
    assert source.asked[-1] == (0, 10)


async def test_a_blob_not_spooled_is_passed_through(tmp_path: Path) -> None:
    source = Counting()
    sched = FetchScheduler(source, spool=BlobSpool(tmp_path))
    await sched.fetch(REF, DIGEST, 0, 100, "demand")
    await sched.fetch(REF, DIGEST, 0, 100, "demand")
    assert source.asked == [(0, 100), (0, 100)]


async def test_the_completion_reads_pieces_ahead_of_its_unpacker() -> None:
    in_flight = peak = 0
    asked: list[int] = []

    async def fetch(offset: int, length: int) -> bytes:
        nonlocal in_flight, peak
        asked.append(offset)
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(0.01)
        in_flight -= 1
        return BLOB[offset:offset + length]

    def unpack(read: object) -> bytes:
        assert callable(read)
        return b"".join(read(off, min(4096, len(BLOB) - off))
                        for off in range(0, len(BLOB), 4096))

    got = await read_ahead(fetch, len(BLOB), 4096, 3, unpack,
                           limiter=trio.CapacityLimiter(1))
    assert got == BLOB
    assert sorted(asked) == list(range(0, len(BLOB), 4096))  # each piece once
    assert peak == 3  # the next pieces were on their way while one was unpacked
