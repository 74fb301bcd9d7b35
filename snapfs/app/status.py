"""The lazy layers' reports for ``snapfs status``: the serving daemon's, else our own.

With a daemon serving, the numbers are the daemon's (asked on ``<state>/status.sock`` with a
blocking socket, so the command starts fast). Without one, they are read from the root: the
layer records (with the fetch counters every serving process persists there,
``snapfs.lazy.counters``), each layer's index from its recorded ranges, the chunk cache and
the materialised directories (``snapfs.lazy.usage``) — no mount, no fetch, and the same
counters a daemon showed before it stopped, or a detached ``snapfs run`` serving the layers
shows meanwhile (as of its last flush). FUSE request counts live only in the serving process.
Must not format anything for a terminal: that is the CLI's.
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
    from snapfs.app.records_status import recorded_reports

    return await recorded_reports(config.root)


__all__ = ["layer_reports"]
