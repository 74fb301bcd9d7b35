"""``snapfs status``: each lazy layer's state, bytes local against total, requests, cache hits.

The numbers live in the process that serves the FUSE mount: :func:`collect_reports` reads
them from its ``LazyLayers`` (``layer_status()``: state, sizes, fetch counters) and its
``LayerFS`` (FUSE requests by operation). A daemon answers for itself on a unix socket,
``<state>/status.sock`` (:func:`serve_status`) — not on the gRPC socket, whose API is
containerd's and stays so. The protocol is one JSON object per line:

    → {"op": "status"}                      ← {"layers": [LayerReport.to_json(), …]}
    → {"op": "record", "layers": [id, …]}   ← {"recording": true}
    → {"op": "stop"}  (or the client hangs up) ← {"paths": [path, …]}
    on failure                              ← {"error": "<message>"}

A recording belongs to its connection, so a client that dies ends it. ``record`` names the
container's layers bottom first; the paths come back merged (``snapfs.lazy.profile``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

import trio

from content.errors import ContentError, InvalidArgument, NotFound, Unavailable
from snapfs.fuse import LayerFS
from snapfs.lazy.profile import LocalRecording

log = logging.getLogger(__name__)

STATUS_SOCKET = "status.sock"
MAX_LINE = 1 << 20
STATES = ("lazy", "fetching", "local")


class FetchCounters(Protocol):
    @property
    def requests(self) -> int: ...
    @property
    def bytes_fetched(self) -> int: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_misses(self) -> int: ...


class LayerStatusLike(Protocol):
    """``snapfs.lazy.layers.LayerStatus``, as far as status needs it."""

    @property
    def layer_id(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def ref(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def local_bytes(self) -> int: ...
    @property
    def stats(self) -> FetchCounters: ...


class StatusSource(Protocol):
    """What status needs of ``snapfs.lazy.layers.LazyLayers``."""

    @property
    def fs(self) -> LayerFS: ...

    def layer_status(self) -> Sequence[LayerStatusLike]: ...


@dataclass(frozen=True, slots=True)
class LayerReport:
    """One lazy layer as ``snapfs status`` shows it (and ``--json`` prints it)."""

    layer_id: str
    digest: str
    image: str
    format: str
    state: str  # lazy | fetching | local
    total_bytes: int
    local_bytes: int
    bytes_fetched: int  # compressed bytes received from the registry
    requests: int  # Range requests sent
    cache_hits: int
    cache_misses: int
    bytes_read: int = 0  # bytes served through FUSE
    fuse_requests: Mapping[str, int] = field(default_factory=dict)
    healthy: bool = True

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fuse_requests": dict(self.fuse_requests)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerReport:
        try:
            return cls(**{**obj, "fuse_requests": dict(obj.get("fuse_requests") or {})})
        except TypeError as exc:
            raise InvalidArgument(f"layer status {obj.get('layer_id', '?')}: {exc}") from exc


def collect_reports(source: StatusSource) -> list[LayerReport]:
    """Every lazy layer of ``source``, by layer id. Call it on the loop that owns it."""
    out = []
    for st in source.layer_status():
        try:
            fuse = source.fs.stats(st.layer_id)
            requests, bytes_read, healthy = dict(fuse.requests), fuse.bytes_read, fuse.healthy
        except NotFound:  # known to the layer store but not mounted (any more)
            requests, bytes_read, healthy = {}, 0, True
        out.append(LayerReport(
            layer_id=st.layer_id, digest=st.digest, image=st.ref, format=st.format,
            state=st.state, total_bytes=st.total_bytes, local_bytes=st.local_bytes,
            bytes_fetched=st.stats.bytes_fetched, requests=st.stats.requests,
            cache_hits=st.stats.cache_hits, cache_misses=st.stats.cache_misses,
            bytes_read=bytes_read, fuse_requests=requests, healthy=healthy))
    return sorted(out, key=lambda r: r.layer_id)


async def gather_reports(source: StatusSource) -> list[LayerReport]:
    """:func:`collect_reports` as a coroutine (for ``TrioPortal.run`` from a scrape thread)."""
    return collect_reports(source)


def status_socket(state: Path) -> Path:
    return state / STATUS_SOCKET


# -- the line protocol --------------------------------------------------------------------------


class _Lines:
    """JSON lines over a trio stream."""

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


async def _handle(source: StatusSource, stream: trio.SocketStream) -> None:
    lines = _Lines(stream, "status client")
    try:
        request = await lines.receive()
        if request is None:
            return
        op = request.get("op")
        if op == "status":
            await lines.send({"layers": [r.to_json() for r in collect_reports(source)]})
        elif op == "record":
            await _record(source, lines, [str(x) for x in request.get("layers") or []])
        else:
            await lines.send({"error": f"status endpoint: unknown op {op!r}"})
    except (ContentError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.warning("status endpoint: %s", exc)
    finally:
        await stream.aclose()


async def _record(source: StatusSource, lines: _Lines, layers: list[str]) -> None:
    recording = LocalRecording(source.fs, layers)
    try:
        await lines.send({"recording": True})
        await lines.receive()  # "stop", or the client went away
    finally:
        paths = await recording.stop()
    await lines.send({"paths": paths})


async def serve_status(source: StatusSource, path: Path, *,
                       task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
                       ) -> NoReturn:
    """Answer status and record requests on the unix socket ``path`` until cancelled."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        await sock.bind(str(path))
        os.chmod(path, 0o600)  # what it reveals and records is the daemon owner's business
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise Unavailable(f"status endpoint {path}: cannot listen: {exc}") from exc
    try:
        async with trio.open_nursery() as nursery:
            listeners = [trio.SocketListener(sock)]
            await nursery.start(trio.serve_listeners, lambda s: _handle(source, s), listeners)
            log.info("status on %s", path)
            task_status.started(path)
            await trio.sleep_forever()
    finally:
        path.unlink(missing_ok=True)
    raise AssertionError("unreachable")


async def _open(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise Unavailable(f"snapfs daemon status endpoint {path}: {exc.strerror or exc} "
                          "(is the daemon older than snapfs status?)") from exc


@asynccontextmanager
async def _connect(path: Path) -> AsyncIterator[_Lines]:
    async with await _open(path) as stream:
        yield _Lines(stream, f"status endpoint {path}")


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
        self._lines = _Lines(stream, f"status endpoint {path}")
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


__all__ = ["STATES", "LayerReport", "RemoteRecording", "StatusSource", "collect_reports",
           "gather_reports", "query_status", "serve_status", "status_socket"]
