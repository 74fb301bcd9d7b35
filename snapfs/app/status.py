"""The lazy layers' reports for ``snapfs status``: the serving daemon's, else our own.

With a daemon serving, the numbers are the daemon's (asked on ``<state>/status.sock``).
Without one, this process mounts the lazy layers itself: states and local bytes are read
from disk, and the counters (requests, fetched bytes, hits) start at zero. Must not format
anything for a terminal: that is the CLI's.
"""

from __future__ import annotations

from snapfs.app.engine import daemon_alive, open_engine
from snapfs.client.reports import LayerReport, collect_reports
from snapfs.client.status import query_status, status_socket
from snapfs.config import Config


async def layer_reports(config: Config) -> list[LayerReport]:
    """Every lazy layer's report, by layer id, from whichever process serves them."""
    if await daemon_alive(config):
        return await query_status(status_socket(config.state))
    async with open_engine(config, mode="embedded") as engine:
        return collect_reports(engine.lazy) if engine.lazy is not None else []


__all__ = ["layer_reports"]
