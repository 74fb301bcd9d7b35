"""The lazy layers' reports for ``snapfs status``: the serving daemon's, else our own.

With a daemon serving, the numbers are the daemon's (asked on ``<state>/status.sock`` with a
blocking socket, so the command starts fast). Without one, this process mounts the lazy
layers itself: states and local bytes are read from disk, and the counters (requests,
fetched bytes, hits) start at zero. Must not format anything for a terminal: that is the
CLI's.
"""

from __future__ import annotations

from snapfs.client.quickstatus import query_status_blocking, status_socket
from snapfs.client.reports import LayerReport
from snapfs.config import Config


def layer_reports(config: Config) -> list[LayerReport]:
    """Every lazy layer's report, by layer id, from whichever process serves them."""
    reports = query_status_blocking(status_socket(config.state))
    if reports is not None:
        return reports
    import trio

    return trio.run(_embedded_reports, config)


async def _embedded_reports(config: Config) -> list[LayerReport]:
    from snapfs.app.engine import open_engine
    from snapfs.client.reports import collect_reports

    async with open_engine(config, mode="embedded") as engine:
        return collect_reports(engine.lazy) if engine.lazy is not None else []


__all__ = ["layer_reports"]
