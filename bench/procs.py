"""Stopping the helper processes a benchmark starts (shaper, snapfs serve, containerd)."""

from __future__ import annotations

import signal

import trio


async def stop_process(proc: trio.Process, grace: float = 10.0) -> None:
    """SIGTERM the process we started, wait up to ``grace`` seconds, then SIGKILL it."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
