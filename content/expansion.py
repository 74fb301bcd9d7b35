"""The bound on how far a layer may expand when unpacked (``[unpack] max_expansion``).

A 7 MB gzip layer can inflate without end (a decompression bomb), and a tar header can
declare a sparse file of any size: both are counted against one :class:`ExpansionLimit`,
the uncompressed stream as it is read and every regular file's size as it is written, and
crossing it raises :class:`LayerTooLarge` with the caller's message (which names the layer
and the limit). Must not touch the disk: the caller removes what was unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from content.errors import InvalidArgument


class LayerTooLarge(InvalidArgument):
    """A layer expands past its :class:`ExpansionLimit`."""


@dataclass(frozen=True, slots=True)
class ExpansionLimit:
    max_bytes: int  # uncompressed tar bytes, and bytes of regular files, each at most this
    message: str  # the error: names the layer, the limit and the config key


class Budget:
    """What one unpacking has used of its limit (None: unbounded)."""

    def __init__(self, limit: ExpansionLimit | None) -> None:
        self._limit = limit
        self._files = 0

    def charge_file(self, size: int) -> None:
        """A regular file of ``size`` bytes is about to be written."""
        self._files += size
        if self._limit is not None and self._files > self._limit.max_bytes:
            raise LayerTooLarge(self._limit.message)

    def reader(self, src: BinaryIO) -> BinaryIO:
        """``src`` counted: reading past the limit raises."""
        return src if self._limit is None else _Bounded(src, self._limit)  # type: ignore[return-value]


class _Bounded:
    def __init__(self, src: BinaryIO, limit: ExpansionLimit) -> None:
        self._src = src
        self._limit = limit
        self._read = 0

    def read(self, n: int = -1) -> bytes:
        # Never more than one byte past the limit per call, so that -1 cannot inflate it all.
        room = self._limit.max_bytes - self._read + 1
        data = self._src.read(room if n < 0 else min(n, room))
        self._read += len(data)
        if self._read > self._limit.max_bytes:
            raise LayerTooLarge(self._limit.message)
        return data


__all__ = ["Budget", "ExpansionLimit", "LayerTooLarge"]
