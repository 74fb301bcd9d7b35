"""ContentStore.write_stream against an in-memory stand-in for a registry's Range requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from content.digest import digest_bytes
from content.errors import DigestMismatch, FailedPrecondition
from content.store import ContentStore

DATA = bytes(range(256)) * 400  # 100 KiB
DGST = digest_bytes(DATA)
CHUNK = 8192


class ConnectionReset(Exception):
    pass


class FakeBlobSource:
    """Serves ``data[offset:]`` in chunks; can fail, stall or end early at a given byte."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.offsets: list[int] = []
        self.fail_at: int | None = None  # raise ConnectionReset once this many bytes are sent
        self.end_at: int | None = None  # end the body cleanly at this absolute offset
        self.stall_at: int | None = None  # block forever at this absolute offset
        self.stalled = trio.Event()

    @asynccontextmanager
    async def open(self, offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
        self.offsets.append(offset)
        yield self._body(offset)

    async def _body(self, offset: int) -> AsyncIterator[bytes]:
        pos = offset
        while pos < len(self.data):
            if self.fail_at is not None and pos >= self.fail_at:
                self.fail_at = None
                raise ConnectionReset(f"connection reset at {pos}")
            if self.end_at is not None and pos >= self.end_at:
                self.end_at = None
                return
            if self.stall_at is not None and pos >= self.stall_at:
                self.stall_at = None
                self.stalled.set()
                await trio.sleep_forever()
            end = min(pos + CHUNK, len(self.data))
            for limit in (self.fail_at, self.end_at, self.stall_at):
                if limit is not None and pos < limit < end:
                    end = limit
            await trio.lowlevel.checkpoint()
            yield self.data[pos:end]
            pos = end


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    with ContentStore(tmp_path / "content") as s:
        yield s


async def test_stream_into_store(store: ContentStore) -> None:
    src = FakeBlobSource()
    info = await store.write_stream("layer", DGST, len(DATA), src.open, "tar", {"l": "1"})
    assert (info.digest, info.size, info.media_type, dict(info.labels)) == (
        DGST,
        len(DATA),
        "tar",
        {"l": "1"},
    )
    assert store.read(DGST) == DATA
    assert src.offsets == [0]
    assert store.ingests() == []


async def test_failed_stream_resumes_from_the_ingest(store: ContentStore) -> None:
    src = FakeBlobSource()
    src.fail_at = 40_000
    with pytest.raises(ConnectionReset):
        await store.write_stream("layer", DGST, len(DATA), src.open)
    [status] = store.ingests()
    assert status.offset == 40_000
    assert not store.exists(DGST)

    info = await store.write_stream("layer", DGST, len(DATA), src.open)
    assert info.digest == DGST and store.read(DGST) == DATA
    assert src.offsets == [0, 40_000]
    assert store.ingests() == []


async def test_stream_that_ends_early_is_reopened_at_the_offset(store: ContentStore) -> None:
    src = FakeBlobSource()
    src.end_at = 30_000
    await store.write_stream("layer", DGST, len(DATA), src.open)
    assert src.offsets == [0, 30_000]
    assert store.read(DGST) == DATA


async def test_stream_short_with_no_progress_reports_sizes(store: ContentStore) -> None:
    src = FakeBlobSource(DATA[:50_000])
    with pytest.raises(FailedPrecondition, match=rf"expected {len(DATA)} bytes, got 50000"):
        await store.write_stream("layer", DGST, len(DATA), src.open)
    assert src.offsets == [0, 50_000]
    assert not store.exists(DGST)
    assert [s.offset for s in store.ingests()] == [50_000]


async def test_stream_of_wrong_bytes_stores_nothing(store: ContentStore) -> None:
    src = FakeBlobSource(DATA[:-1] + b"X")
    with pytest.raises(DigestMismatch):
        await store.write_stream("layer", DGST, None, src.open)
    assert store.list() == [] and store.ingests() == []
    assert not any(p.is_file() for p in (store.root / "blobs").rglob("*"))


async def test_existing_blob_is_not_fetched(store: ContentStore) -> None:
    stored = store.write_blob(DATA, "tar")
    src = FakeBlobSource()
    assert await store.write_stream("layer", DGST, len(DATA), src.open) == stored
    assert src.offsets == []


async def test_complete_ingest_commits_without_fetching(store: ContentStore) -> None:
    w = store.open_ingest("layer", DGST, None)
    w.write(DATA)
    w.close()
    src = FakeBlobSource()
    assert (await store.write_stream("layer", DGST, None, src.open)).digest == DGST
    assert src.offsets == []


async def test_cancelled_stream_keeps_its_bytes(store: ContentStore) -> None:
    src = FakeBlobSource()
    src.stall_at = 60_000
    async with trio.open_nursery() as nursery:

        async def pull() -> None:
            await store.write_stream("layer", DGST, len(DATA), src.open)

        nursery.start_soon(pull)
        await src.stalled.wait()
        nursery.cancel_scope.cancel()
    assert [s.offset for s in store.ingests()] == [60_000]
    await store.write_stream("layer", DGST, len(DATA), src.open)
    assert src.offsets == [0, 60_000]
    assert store.read(DGST) == DATA


async def test_concurrent_pulls_of_one_ref_exclude_each_other(store: ContentStore) -> None:
    src = FakeBlobSource()
    src.stall_at = 10_000
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write_stream, "layer", DGST, len(DATA), src.open)
        await src.stalled.wait()
        try:
            await store.write_stream("layer", DGST, len(DATA), FakeBlobSource().open)
        except FailedPrecondition as exc:
            errors.append(exc)
        nursery.cancel_scope.cancel()
    assert len(errors) == 1 and "locked" in str(errors[0])
    # A different ref for the same digest is fine, and yields the one blob.
    await store.write_stream("other-ref", DGST, len(DATA), FakeBlobSource().open)
    assert len(store.list()) == 1


async def test_a_follower_can_read_every_byte_on_data_reports(store: ContentStore) -> None:
    # Small pieces, as a slow link delivers them: each must be in the file (not in a write
    # buffer) when on_data says it is, or content.follow's reader waits for the commit.
    class Dribble(FakeBlobSource):
        async def _body(self, offset: int) -> AsyncIterator[bytes]:
            for pos in range(offset, len(self.data), 1000):
                await trio.lowlevel.checkpoint()
                yield self.data[pos:pos + 1000]

    short: list[tuple[int, int]] = []

    def on_data(path: Path, offset: int) -> None:
        on_disk = path.stat().st_size
        if on_disk < offset:
            short.append((offset, on_disk))

    await store.write_stream("layer", DGST, len(DATA), Dribble().open, on_data=on_data)
    assert store.exists(DGST) and short == []
