"""Pure parsing of HTTP range answers: ``Content-Range`` and ``multipart/byteranges``.

Must not do I/O: it parses headers and bodies it is handed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from content.errors import InvalidArgument

_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


def range_header(ranges: Sequence[tuple[int, int]]) -> str:
    """``Range`` for (offset, length) pairs; lengths must be positive."""
    return "bytes=" + ",".join(f"{o}-{o + n - 1}" for o, n in ranges)


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes 0-99/1234`` → (0, 99, 1234); the total is None for ``*``."""
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        raise InvalidArgument(f"invalid Content-Range {value!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise InvalidArgument(f"invalid Content-Range {value!r}: end before start")
    return start, end, None if m.group(3) == "*" else int(m.group(3))


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` content type, else None."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip().strip('"')
    return None


def parse_byteranges(body: bytes, boundary: str) -> list[tuple[int, bytes]]:
    """The (offset, data) parts of a multipart/byteranges body.

    Each part's length comes from its Content-Range, so a boundary-like byte string inside
    the data cannot cut a part short.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[tuple[int, bytes]] = []
    pos = body.find(delimiter)
    while pos >= 0:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            break
        header_end = body.find(b"\r\n\r\n", pos)
        if header_end < 0:
            raise InvalidArgument("multipart/byteranges: part without a header end")
        content_range = None
        for line in body[pos:header_end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-range":
                content_range = value.strip()
        if content_range is None:
            raise InvalidArgument("multipart/byteranges: part without Content-Range")
        start, end, _ = parse_content_range(content_range)
        data_start = header_end + 4
        data = body[data_start : data_start + end - start + 1]
        if len(data) != end - start + 1:
            raise InvalidArgument(
                f"multipart/byteranges: part {content_range} has only {len(data)} bytes"
            )
        parts.append((start, data))
        pos = body.find(delimiter, data_start + len(data))
    return parts


def slice_parts(parts: Sequence[tuple[int, bytes]], offset: int, length: int) -> bytes | None:
    """``length`` bytes at ``offset`` out of whichever part holds them, else None."""
    for start, data in parts:
        if start <= offset and offset + length <= start + len(data):
            return data[offset - start : offset - start + length]
    return None
