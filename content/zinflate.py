"""Inflating gzip from any deflate block boundary: the system zlib through ctypes.

Resuming a deflate stream mid-way needs the 32 KiB window of output before the point and,
when the point is not byte-aligned, the unused bits of the last byte consumed (zlib's
``inflatePrime``). Python's ``zlib`` module exposes neither ``inflatePrime`` nor the
``Z_BLOCK`` flush that reports block boundaries (``data_type`` bits), so this module calls
``libz.so.1`` directly, as zlib's own ``examples/zran.c`` does. (``indexed_gzip`` and
``rapidgzip`` keep such checkpoints too, but only behind a seekable file object that does its
own reads: they cannot inflate a span handed to them from a Range request.)

:class:`Inflater` is a thin, blocking wrapper over one ``z_stream``; it is CPU-bound: call it
from a worker thread. Errors are ``zlib.error``, like Python's module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib
from typing import Any

Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR = 0, 1, 2, -5
Z_NO_FLUSH, Z_BLOCK = 0, 5
WINDOW = 32768
GZIP_AUTO = 15 + 32  # zlib or gzip header, detected
RAW = -15  # raw deflate: a span resumed after the header


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong), ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int), ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong),
    ]


def _load() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    for name in ("inflate", "inflatePrime"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int, *(
            [ctypes.c_int] if name == "inflatePrime" else [])]
    lib.inflateSetDictionary.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
    lib.inflateEnd.argtypes = [ctypes.c_void_p]
    return lib


_LIB = _load()
_VERSION: bytes = _LIB.zlibVersion()


class Inflater:
    """One inflate stream. ``bits``/``value`` and ``window`` resume it at a checkpoint."""

    def __init__(self, wbits: int = GZIP_AUTO, *, bits: int = 0, value: int = 0,
                 window: bytes = b"") -> None:
        self._strm = _ZStream()
        self._ptr = ctypes.byref(self._strm)
        self._check(_LIB.inflateInit2_(self._ptr, wbits, _VERSION, ctypes.sizeof(_ZStream)),
                    "inflateInit2")
        self.finished = False
        try:
            if bits:
                self._check(_LIB.inflatePrime(self._ptr, bits, value), "inflatePrime")
            if window:
                self._check(_LIB.inflateSetDictionary(self._ptr, window, len(window)),
                            "inflateSetDictionary")
        except zlib.error:
            self.close()
            raise

    def _check(self, rc: int, what: str) -> int:
        if rc not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
            msg = self._strm.msg.decode(errors="replace") if self._strm.msg else f"rc {rc}"
            raise zlib.error(f"{what}: {msg}")
        return rc

    @property
    def total_in(self) -> int:
        return int(self._strm.total_in)

    @property
    def total_out(self) -> int:
        return int(self._strm.total_out)

    @property
    def at_block_boundary(self) -> bool:
        """At the end of a deflate block that is not the last one (a checkpoint may go here)."""
        dt = self._strm.data_type
        return bool(dt & 128) and not dt & 64

    @property
    def pending_bits(self) -> int:
        """Unused bits of the last byte consumed."""
        return int(self._strm.data_type & 7)

    def inflate(self, data: bytes, pos: int, out_size: int, *,
                block: bool = False) -> tuple[bytes, int]:
        """Inflate ``data[pos:]`` into at most ``out_size`` bytes; stop after a block end if
        ``block``. Returns the output and the new position in ``data`` (no input is copied)."""
        buf = ctypes.create_string_buffer(out_size)
        base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        s = self._strm
        s.next_in = base + pos
        s.avail_in = len(data) - pos
        s.next_out = ctypes.cast(buf, ctypes.c_void_p)
        s.avail_out = out_size
        rc = self._check(_LIB.inflate(self._ptr, Z_BLOCK if block else Z_NO_FLUSH), "inflate")
        if rc == Z_STREAM_END:
            self.finished = True
        produced = out_size - s.avail_out
        return ctypes.string_at(buf, produced), len(data) - s.avail_in

    def close(self) -> None:
        if self._strm.state:
            _LIB.inflateEnd(self._ptr)
            self._strm.state = None

    def __enter__(self) -> Inflater:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inflate_span(raw: bytes, length: int, *, bits: int, window: bytes) -> bytes:
    """``length`` uncompressed bytes from a checkpoint: ``raw`` starts at the byte holding its
    ``bits`` pending bits (or at the checkpoint itself when ``bits`` is 0). Raises
    ``zlib.error`` when the data cannot give that many bytes."""
    value, start = (raw[0] >> (8 - bits), 1) if bits else (0, 0)
    if bits and not raw:
        raise zlib.error("no input")
    parts: list[bytes] = []
    got = 0
    with Inflater(RAW, bits=bits, value=value, window=window) as z:
        pos = start
        while got < length:
            out, new = z.inflate(raw, pos, min(length - got, 1 << 22))
            parts.append(out)
            got += len(out)
            if z.finished or (not out and new == pos):
                break
            pos = new
    if got != length:
        raise zlib.error(f"span ended after {got} of {length} bytes")
    return b"".join(parts)


__all__ = ["WINDOW", "Inflater", "inflate_span"]
