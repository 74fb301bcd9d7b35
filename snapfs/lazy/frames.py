"""The wire between the daemon and the FUSE server: length-prefixed JSON headers + bytes.

One message is ``!II`` (header length, body length), a UTF-8 JSON object, then the body::

    +--------+--------+-------------------+----------------------+
    | hlen:4 | blen:4 | header (JSON)     | body (blen bytes)    |
    +--------+--------+-------------------+----------------------+

Both sockets (``fuse-server.sock``: daemon → server control; ``fetch.sock``: server →
daemon blob ranges) speak it, one request then one reply at a time per connection. An error
reply is ``{"error": "<ContentError class name>", "message": …}``: ``raise_for`` turns it
back into the same class of :mod:`content.errors`, so the errno and gRPC tables still apply.

Must not know what the messages mean: it frames, and maps the error tree both ways.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import trio

from content import errors

_HEAD = struct.Struct("!II")
MAX_HEADER = 64 << 20  # a TOC's ranges travel in the body; headers stay small
MAX_BODY = 1 << 30
PROTOCOL = 1  # bumped when a message changes incompatibly (hello says which)

Header = dict[str, Any]


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes | None:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = await stream.receive_some(min(n - got, 1 << 20))
        if not chunk:
            if got:
                raise errors.Unavailable(f"peer closed mid-message ({got} of {n} bytes)")
            return None
        parts.append(bytes(chunk))
        got += len(chunk)
    return b"".join(parts)


async def send(stream: trio.abc.SendStream, header: Header, body: bytes = b"") -> None:
    """Send one message."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    await stream.send_all(_HEAD.pack(len(raw), len(body)) + raw + body)


async def messages(stream: trio.abc.ReceiveStream) -> AsyncIterator[tuple[Header, bytes]]:
    """Each message on ``stream`` until the peer closes it or it breaks (a server's loop)."""
    while True:
        try:
            msg = await receive(stream)
        except (OSError, trio.BrokenResourceError, errors.ContentError):
            return
        if msg is None:
            return
        yield msg


async def receive(stream: trio.abc.ReceiveStream) -> tuple[Header, bytes] | None:
    """One message, or None when the peer closed the connection between messages."""
    head = await _read_exactly(stream, _HEAD.size)
    if head is None:
        return None
    hlen, blen = _HEAD.unpack(head)
    if hlen > MAX_HEADER or blen > MAX_BODY:
        raise errors.InvalidArgument(f"message of {hlen}+{blen} bytes exceeds the limits")
    raw = await _read_exactly(stream, hlen) if hlen else b"{}"
    body = await _read_exactly(stream, blen) if blen else b""
    if raw is None or body is None:
        raise errors.Unavailable("peer closed mid-message")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise errors.InvalidArgument("message header is not a JSON object")
    return header, body


def error_header(exc: errors.ContentError) -> Header:
    """The reply that carries ``exc`` across."""
    return {"error": type(exc).__name__, "message": str(exc)}


_KINDS: dict[str, type[errors.ContentError]] = {
    cls.__name__: cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.ContentError)}


def raise_for(header: Header) -> None:
    """Raise the error a reply carries (same class), if it carries one."""
    kind = header.get("error")
    if kind is None:
        return
    cls = _KINDS.get(str(kind), errors.Internal)
    message = str(header.get("message", ""))
    if cls is errors.DigestMismatch:
        raise errors.InvalidArgument(message)  # its constructor wants digests, not text
    raise cls(message)


__all__ = ["PROTOCOL", "Header", "error_header", "raise_for", "receive", "send"]
