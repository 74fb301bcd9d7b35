"""Sparse checkpoint windows: which of a checkpoint's 32 KiB of history its span really uses.

A deflate stream resumed at a checkpoint needs the 32 KiB of output before it only where a
back-reference of the following data reaches into it; a reference at output position ``o``
(counted from the checkpoint) reaches back at most 32 KiB, so only the first 32 KiB after the
checkpoint can reach the window at all. :func:`used_window` walks those symbols (a small
deflate decoder that tracks positions, not bytes) and returns the window with every byte no
reference reaches set to zero: the inflater produces the very same output from it, and runs
of zeros cost almost nothing once the index is zstd-compressed. Often much of the window is
unused, so the same index size affords denser checkpoints, and each read fetches less from
the checkpoint before its file (``content.gzindex``'s ``DEFAULT_SPAN``; the idea is
rapidgzip's sparse windows).

The walk only proposes; :func:`sparse_window` inflates the checkpoint's data again with the
proposed window and keeps it only if the output is identical (else the full window), so a
mistake here can cost size, never a wrong byte. Pure and CPU-bound (a worker thread).
Must not parse an index (``content.gzlayer`` does).
"""

from __future__ import annotations

import zlib

from content.zinflate import WINDOW, inflate_span

_LEN_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
             99, 115, 131, 163, 195, 227, 258)
_LEN_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5,
              5, 0)
_DIST_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
              1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
_DIST_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11,
               12, 12, 13, 13)
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


class _Stop(Exception):
    """The data ran out, or is not deflate as expected: the caller keeps the full window."""


class _Bits:
    """LSB-first bit reader over ``data`` from bit ``skip`` of its first byte."""

    def __init__(self, data: bytes, skip: int) -> None:
        self.data = data
        self.pos = 0
        self.buf = 0
        self.cnt = 0
        if skip:
            self.need(8)
            self.take(skip)

    def need(self, n: int) -> None:
        while self.cnt < n:
            if self.pos >= len(self.data) + 4:
                raise _Stop
            # Past the end reads zeros: a peek for a long code may run over by a few bytes.
            self.buf |= (self.data[self.pos] if self.pos < len(self.data) else 0) << self.cnt
            self.pos += 1
            self.cnt += 8

    def take(self, n: int) -> int:
        self.need(n)
        v = self.buf & ((1 << n) - 1)
        self.buf >>= n
        self.cnt -= n
        return v

    def symbol(self, table: tuple[list[int], int]) -> int:
        codes, width = table
        self.need(width)
        entry = codes[self.buf & ((1 << width) - 1)]
        if not entry:
            raise _Stop
        n = entry & 15
        self.buf >>= n
        self.cnt -= n
        return entry >> 4


def _table(lengths: list[int]) -> tuple[list[int], int]:
    """A lookup table indexed by the next ``width`` stream bits: ``symbol << 4 | length``."""
    width = max(lengths, default=0) or 1
    codes = [0] * (1 << width)
    code = 0
    for n in range(1, width + 1):
        for sym, ln in enumerate(lengths):
            if ln != n:
                continue
            rev = int(f"{code:0{n}b}"[::-1], 2)
            for i in range(rev, 1 << width, 1 << n):
                codes[i] = sym << 4 | n
            code += 1
        code <<= 1
    return codes, width


_FIXED = (_table([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8), _table([5] * 30))


def _dynamic(b: _Bits) -> tuple[tuple[list[int], int], tuple[list[int], int]]:
    nlit, ndist, ncl = b.take(5) + 257, b.take(5) + 1, b.take(4) + 4
    cl = [0] * 19
    for i in range(ncl):
        cl[_CL_ORDER[i]] = b.take(3)
    cl_table = _table(cl)
    lengths: list[int] = []
    while len(lengths) < nlit + ndist:
        sym = b.symbol(cl_table)
        if sym < 16:
            lengths.append(sym)
        elif sym == 16:
            if not lengths:
                raise _Stop
            lengths += [lengths[-1]] * (3 + b.take(2))
        else:
            lengths += [0] * ((3 + b.take(3)) if sym == 17 else (11 + b.take(7)))
    return _table(lengths[:nlit]), _table(lengths[nlit:nlit + ndist])


def used_window(data: bytes, bits: int, window: bytes) -> bytes:
    """``window`` with the bytes no back-reference of ``data`` reaches zeroed. ``data``: the
    compressed bytes from the checkpoint (the first one partly used when ``bits``, its top
    ``bits`` bits unread), enough to produce 32 KiB of output or to end the stream.
    Raises :class:`_Stop` when the walk cannot finish (the caller keeps the full window)."""
    w = len(window)
    mask = bytearray(w)
    b = _Bits(data, 8 - bits if bits else 0)
    out = 0
    final = 0
    while out < WINDOW and not final:
        final, kind = b.take(1), b.take(2)
        if kind == 0:
            b.take(b.cnt & 7)  # to the byte boundary
            n = b.take(16)
            if n ^ 0xFFFF != b.take(16):
                raise _Stop
            out += n  # literal bytes: no references (the reader skips them by count only)
            b.buf, b.cnt, b.pos = 0, 0, b.pos - b.cnt // 8 + n
            continue
        if kind == 3:
            raise _Stop
        lit, dist = _FIXED if kind == 1 else _dynamic(b)
        while out < WINDOW:
            sym = b.symbol(lit)
            if sym < 256:
                out += 1
                continue
            if sym == 256:
                break
            sym -= 257
            if sym >= 29:
                raise _Stop
            length = _LEN_BASE[sym] + b.take(_LEN_EXTRA[sym])
            d = b.symbol(dist)
            if d >= 30:
                raise _Stop
            src = out - (_DIST_BASE[d] + b.take(_DIST_EXTRA[d]))
            if src < 0:
                if src < -w:
                    raise _Stop
                mask[w + src:w + min(src + length, 0)] = b"\xff" * (min(src + length, 0) - src)
            out += length
    return (int.from_bytes(window, "little") & int.from_bytes(mask, "little")).to_bytes(
        w, "little")


def sparse_window(data: bytes, bits: int, window: bytes, produced: bytes) -> bytes:
    """The sparse form of ``window`` if inflating ``data`` from it gives ``produced`` (the
    stream's real output after the checkpoint, up to 32 KiB) exactly; else ``window``."""
    if not window:
        return window
    try:
        sparse = used_window(data, bits, window)
    except (_Stop, IndexError):
        return window
    if sparse == window:
        return window
    try:
        got = inflate_span(data, len(produced), bits=bits, window=sparse)
    except zlib.error:
        return window
    return sparse if got == produced else window

__all__ = ["sparse_window", "used_window"]
