"""The client of a daemon's status socket, ``<state>/status.sock``: reports and recordings.

A daemon answers for itself on a unix socket (``snapfs.daemon.status_server``) — not on the
gRPC socket, whose API is containerd's and stays so. The protocol is one JSON object per
line (``snapfs.client.jsonlines``):

    → {"op": "status"}                      ← {"layers": [LayerReport.to_json(), …]}
    → {"op": "record", "layers": [id, …]}   ← {"recording": true}
    → {"op": "stop"}  (or the client hangs up) ← {"paths": [path, …]}
    on failure                              ← {"error": "<message>"}

A recording belongs to its connection, so a client that dies ends it. ``record`` names the
container's layers bottom first; the paths come back merged (``snapfs.lazy.profile``).
Must not serve: answering on the socket is the daemon's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from content.errors import InvalidArgument, Unavailable
from snapfs.client.jsonlines import JsonLines
from snapfs.client.quickstatus import STATUS_SOCKET, status_socket
from snapfs.client.reports import LayerReport


async def _open(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise Unavailable(f"snapfs daemon status endpoint {path}: {exc.strerror or exc} "
                          "(is the daemon older than snapfs status?)") from exc


@asynccontextmanager
async def _connect(path: Path) -> AsyncIterator[JsonLines]:
    async with await _open(path) as stream:
        yield JsonLines(stream, f"status endpoint {path}")


def _reply(obj: dict[str, Any] | None, path: Path, key: str) -> Any:
    if obj is None:
        raise Unavailable(f"status endpoint {path}: closed the connection without answering")
    if "error" in obj:
        raise InvalidArgument(str(obj["error"]))
    if key not in obj:
        raise InvalidArgument(f"status endpoint {path}: answer lacks {key!r}")
    return obj[key]


async def query_status(path: Path) -> list[LayerReport]:
    """The layer reports of the daemon whose status socket is ``path``."""
    async with _connect(path) as lines:
        await lines.send({"op": "status"})
        layers = _reply(await lines.receive(), path, "layers")
    return [LayerReport.from_json(obj) for obj in layers]


class RemoteRecording:
    """A recording in the daemon behind a status socket; see :meth:`start`."""

    def __init__(self, path: Path, stream: trio.SocketStream) -> None:
        self._path = path
        self._stream = stream
        self._lines = JsonLines(stream, f"status endpoint {path}")
        self._paths: list[str] | None = None

    @classmethod
    async def start(cls, path: Path, layers: Sequence[str]) -> RemoteRecording:
        """Ask the daemon to record accesses to ``layers`` (bottom first) from now on."""
        stream = await _open(path)
        rec = cls(path, stream)
        try:
            await rec._lines.send({"op": "record", "layers": list(layers)})
            _reply(await rec._lines.receive(), path, "recording")
        except BaseException:
            await stream.aclose()
            raise
        return rec

    async def stop(self) -> list[str]:
        """End the recording (once; later calls return the same): the merged paths."""
        if self._paths is None:
            try:
                await self._lines.send({"op": "stop"})
                self._paths = [str(p) for p in
                               _reply(await self._lines.receive(), self._path, "paths")]
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise Unavailable(f"status endpoint {self._path}: connection lost while "
                                  f"recording: {exc}") from exc
            finally:
                await self._stream.aclose()
        return list(self._paths)

    async def aclose(self) -> None:
        await self._stream.aclose()


__all__ = ["STATUS_SOCKET", "RemoteRecording", "query_status", "status_socket"]
