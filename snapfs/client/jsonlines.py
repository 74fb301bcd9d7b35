"""JSON-lines framing over a trio stream: one JSON object per line, both ways.

The one framing of the status socket, used by its client (``snapfs.client.status``) and its
server (``snapfs.daemon.status_server``). Must not know any message of the protocol: it
moves objects, the two ends give them meaning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import trio

from content.errors import InvalidArgument

MAX_LINE = 1 << 20


class JsonLines:
    """JSON lines over a trio stream; ``what`` names the peer in error messages."""

    def __init__(self, stream: trio.abc.Stream, what: str) -> None:
        self._stream = stream
        self._buf = b""
        self._what = what

    async def receive(self) -> dict[str, Any] | None:
        """The next object, or None at end of stream."""
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise InvalidArgument(f"{self._what}: message longer than {MAX_LINE} bytes")
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InvalidArgument(f"{self._what}: malformed message: {exc}") from exc
        if not isinstance(obj, dict):
            raise InvalidArgument(f"{self._what}: message is not a JSON object")
        return obj

    async def send(self, obj: Mapping[str, Any]) -> None:
        await self._stream.send_all(json.dumps(obj).encode() + b"\n")


__all__ = ["MAX_LINE", "JsonLines"]
