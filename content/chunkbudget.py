"""The chunk cache's budget: which chunks it holds, in least-recently-used order, and which
must go so that a new one fits under ``[cache] max_size`` and leaves ``min_free`` free.

Plain bookkeeping, thread-safe (the cache is used from worker threads): the cache tells it
what it stored, read and removed, asks :meth:`CacheBudget.reserve` before storing and
deletes what that returns. Each eviction is counted by its cause (``max_size`` or
``min_free``). Every chunk in the cache belongs to a layer that is still lazy (a layer's
chunks leave the cache when it is materialised, and materialisation streams the whole blob,
not the cache), and a chunk evicted under a reader is simply fetched and verified again, so
any chunk may go. Must not do I/O but through the ``free_bytes`` callable it is given.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CAUSES = ("max_size", "min_free")


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 0  # 0: no limit
    min_free: int = 0  # bytes the filesystem keeps free; 0: no floor

    @property
    def bounded(self) -> bool:
        return self.max_bytes > 0 or self.min_free > 0


@dataclass(frozen=True, slots=True)
class Evictions:
    """Evictions by cause since the counts were loaded (chunks and bytes)."""

    chunks: dict[str, int]
    bytes: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.chunks.values())


class CacheBudget:
    """The LRU order of the cached chunks (by name) and their sizes."""

    def __init__(self, limits: Limits, free_bytes: Callable[[], int] | None = None) -> None:
        self.limits = limits
        self._free_bytes = free_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # oldest first
        self._used = 0
        self._reserved = 0
        self._chunks = dict.fromkeys(CAUSES, 0)
        self._bytes = dict.fromkeys(CAUSES, 0)

    def load(self, entries: Iterable[tuple[str, int, float]]) -> None:
        """What is on disk: (name, size, last use), in any order."""
        with self._lock:
            for name, size, _ in sorted(entries, key=lambda e: e[2]):
                if name not in self._sizes:
                    self._sizes[name] = size
                    self._used += size

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def touch(self, name: str) -> None:
        with self._lock:
            if name in self._sizes:
                self._sizes.move_to_end(name)

    def reserve(self, name: str, size: int) -> list[str]:
        """Make room for ``size`` more bytes; the chunks to delete now (already forgotten and
        counted). Pair with :meth:`stored` or :meth:`cancel`."""
        victims: list[str] = []
        with self._lock:
            limit = self.limits.max_bytes
            while limit and self._sizes and self._used + self._reserved + size > limit:
                victims.append(self._evict("max_size"))
            if self.limits.min_free and self._free_bytes is not None:
                short = self.limits.min_free + size - self._free_bytes()
                while short > 0 and self._sizes:
                    freed = self._sizes[next(iter(self._sizes))]
                    victims.append(self._evict("min_free"))
                    short -= freed
            self._reserved += size
        return [v for v in victims if v != name]

    def _evict(self, cause: str) -> str:
        name, size = self._sizes.popitem(last=False)
        self._used -= size
        self._chunks[cause] += 1
        self._bytes[cause] += size
        return name

    def stored(self, name: str, size: int, *, reserved: bool = True) -> None:
        with self._lock:
            if reserved:
                self._reserved -= size
            if name not in self._sizes:
                self._sizes[name] = size
                self._used += size
            self._sizes.move_to_end(name)

    def cancel(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def removed(self, name: str) -> None:
        with self._lock:
            size = self._sizes.pop(name, None)
            if size is not None:
                self._used -= size

    def evictions(self) -> Evictions:
        with self._lock:
            return Evictions(dict(self._chunks), dict(self._bytes))


__all__ = ["CAUSES", "CacheBudget", "Evictions", "Limits"]
