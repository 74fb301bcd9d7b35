"""The daemon's status socket, ``<state>/status.sock``: answers status and record requests.

The protocol (one JSON object per line) is drawn in ``snapfs.client.status``, its client.
A recording belongs to its connection: it starts on ``record`` and ends on ``stop`` or when
the client hangs up. Must not compute reports or profiles itself: those are
``snapfs.client.reports`` and ``snapfs.lazy.profile``'s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NoReturn, Protocol

import trio

from content.errors import ContentError, Unavailable
from snapfs.client.jsonlines import JsonLines
from snapfs.client.reports import StatusSource, gather_reports
from snapfs.lazy.profile import FuseHolder, LocalRecording

log = logging.getLogger(__name__)


class Source(StatusSource, FuseHolder, Protocol):
    """What the endpoint needs of ``snapfs.lazy.layers.LazyLayers``."""


async def _handle(source: Source, stream: trio.SocketStream) -> None:
    lines = JsonLines(stream, "status client")
    try:
        request = await lines.receive()
        if request is None:
            return
        op = request.get("op")
        if op == "status":
            await lines.send({"layers": [r.to_json() for r in await gather_reports(source)]})
        elif op == "record":
            await _record(source, lines, [str(x) for x in request.get("layers") or []])
        else:
            await lines.send({"error": f"status endpoint: unknown op {op!r}"})
    except (ContentError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.warning("status endpoint: %s", exc)
    finally:
        await stream.aclose()


async def _record(source: Source, lines: JsonLines, layers: list[str]) -> None:
    recording = await LocalRecording.start(source, layers)
    try:
        await lines.send({"recording": True})
        await lines.receive()  # "stop", or the client went away
    finally:
        paths = await recording.stop()
    await lines.send({"paths": paths})


async def serve_status(source: Source, path: Path, *,
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


__all__ = ["serve_status"]
