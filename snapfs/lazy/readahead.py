"""The background stream of one blob: the next pieces fetched while the unpacker works.

The completion (``snapfs.lazy.complete``) reads its blob front to back, one piece at a time,
from a worker thread. Asked one by one, each piece would leave the link idle for a round trip
and for the unpacker's work on the previous one (at 100 Mbit/s and 20 ms RTT a lone 1 MiB
piece keeps the link ~80 % busy, less while the disk is slow). :class:`ReadAhead` keeps
``depth`` pieces in flight ahead of the reader, so the link stays busy and the scheduler's
``background_concurrency`` is used.

Must not verify or keep anything beyond the pieces in flight: the completion hashes what it
reads; pieces go through the scheduler (and its spool) like any background request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from content.errors import ContentError, Unavailable
from snapfs.errors import single_errors

T = TypeVar("T")
FetchAsync = Callable[[int, int], Awaitable[bytes]]  # (offset, length) -> bytes


@dataclass(eq=False, slots=True)
class _Piece:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: ContentError | OSError | None = None


class ReadAhead:
    """Pieces ``[k·piece, (k+1)·piece)`` of a blob of ``size`` bytes, fetched up to ``depth``
    ahead of the one asked for, in ``nursery``."""

    def __init__(self, fetch: FetchAsync, size: int, piece: int, depth: int,
                 nursery: trio.Nursery) -> None:
        self._fetch = fetch
        self._size = size
        self._piece = piece
        self._depth = max(1, depth)
        self._nursery = nursery
        self._pieces: dict[int, _Piece] = {}

    async def get(self, offset: int, length: int) -> bytes:
        """The piece at ``offset`` (as the reader asks for it); starts the next ones."""
        if offset % self._piece or length != min(self._piece, self._size - offset):
            return await self._fetch(offset, length)  # not a piece boundary: ask directly
        for k in range(self._depth):
            start = offset + k * self._piece
            if start < self._size and start not in self._pieces:
                self._pieces[start] = _Piece()
                self._nursery.start_soon(self._run, start, self._pieces[start])
        for start in [s for s in self._pieces if s < offset]:
            del self._pieces[start]  # skipped by the reader: never asked for
        piece = self._pieces[offset]
        await piece.done.wait()
        del self._pieces[offset]
        if piece.error is not None:
            raise piece.error
        if piece.data is None:
            raise Unavailable(f"blob piece at {offset}: its fetch was abandoned")
        return piece.data

    async def _run(self, start: int, piece: _Piece) -> None:
        try:
            piece.data = await self._fetch(start, min(self._piece, self._size - start))
        except (ContentError, OSError) as exc:
            piece.error = exc
        finally:
            piece.done.set()


async def read_ahead(fetch: FetchAsync, size: int, piece: int, depth: int,
                     work: Callable[[Callable[[int, int], bytes]], T], *,
                     limiter: trio.CapacityLimiter) -> T:
    """Run ``work`` in a worker thread (under ``limiter``), handing it a blocking
    ``(offset, length) -> bytes`` that reads ``fetch``'s pieces ``depth`` ahead; returns
    what ``work`` returns. Its own error is raised, not a group of one."""
    with single_errors():
        async with trio.open_nursery() as nursery:
            ahead = ReadAhead(fetch, size, piece, depth, nursery)

            def blocking(offset: int, length: int) -> bytes:
                return trio.from_thread.run(ahead.get, offset, length)

            try:
                return await trio.to_thread.run_sync(work, blocking, limiter=limiter)
            finally:
                nursery.cancel_scope.cancel()  # pieces the work did not ask for


__all__ = ["FetchAsync", "ReadAhead", "read_ahead"]
