"""The shaper as a child process, and the parent's handle on it.

The proxy runs in its own process (``python -m bench shaper``) so that shaping competes for
no interpreter lock with the benchmark driver. The child prints one JSON line with its ports
once it listens; its counters are read through a control port: connect, read one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from bench.procs import stop_process
from bench.shaper import LinkStats, ShaperInfo, serve_shaper
from content.errors import Unavailable


@dataclass(frozen=True, slots=True)
class LinkSettings:
    rate_bps: float
    rtt_ms: float

    def describe(self) -> str:
        return f"{self.rate_bps / 1e6:g} Mbit/s, {self.rtt_ms:g} ms RTT"


async def serve_control(info: ShaperInfo, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer every connection with the link's counters as one JSON line."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            line = json.dumps(info.link.stats.to_json()) + "\n"
            await stream.send_all(line.encode())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def run_shaper_process(listen: int, upstream: str, rate_bps: float, rtt_ms: float) -> None:
    """The child's body: shape ``upstream`` (HOST:PORT), announce the ports on stdout."""
    host, _, port = upstream.rpartition(":")
    async with trio.open_nursery() as nursery:
        info: ShaperInfo = await nursery.start(
            lambda task_status: serve_shaper(listen, host, int(port), rate_bps=rate_bps,
                                             rtt_ms=rtt_ms, task_status=task_status))
        control = await nursery.start(serve_control, info)
        print(json.dumps({"port": info.port, "control": control}), flush=True)


@dataclass(frozen=True, slots=True)
class ShapedLink:
    host: str  # "127.0.0.1:PORT": point clients here instead of at the registry
    control_port: int
    settings: LinkSettings
    pid: int

    async def stats(self) -> LinkStats:
        stream = await trio.open_tcp_stream("127.0.0.1", self.control_port)
        async with stream:
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
        return LinkStats(**json.loads(data))


@asynccontextmanager
async def open_shaped_link(upstream: str, settings: LinkSettings) -> AsyncIterator[ShapedLink]:
    """Start ``python -m bench shaper`` in front of ``upstream``; stop it by PID on exit."""
    cmd = [sys.executable, "-m", "bench", "shaper", "--listen", "0", "--upstream", upstream,
           "--rate", f"{settings.rate_bps:.0f}", "--rtt", f"{settings.rtt_ms}ms"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.move_on_after(20):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                if not chunk:
                    break
                line += chunk
        if not line.endswith(b"\n"):
            raise Unavailable(f"bench shaper in front of {upstream} did not start "
                              f"(exit status {proc.poll()})")
        ports = json.loads(line)
        yield ShapedLink(f"127.0.0.1:{ports['port']}", ports["control"], settings, proc.pid)
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(proc)
