"""Lazy reads that failed while a container ran, for the one line its user is pointed to.

A failed lazy read reaches a container as a bare ``Input/output error`` (runc cannot start,
or the program fails). The layer keeps its last error naming registry, repository and blob
(``snapfs.lazy.view``); ``snapfs run`` compares those errors before and after the container
and logs each new one. From this process's own lazy layers (embedded; their FUSE server
reports its reads' errors), else from the serving daemon's status socket.
Must not format for a terminal or decide exit codes: ``run`` does.
"""

from __future__ import annotations

import trio

from snapfs.app.engine import Engine
from snapfs.client.quickstatus import query_status_blocking, status_socket


async def read_errors(engine: Engine) -> dict[str, str]:
    """Each lazy layer's last read error (by layer digest), where it has one."""
    if engine.lazy is not None:
        # The reads ran in the FUSE server (shared by daemon-less commands): ask it first.
        await engine.lazy.refresh_fuse_stats()
        return {s.digest: s.last_error for s in engine.lazy.layer_status() if s.last_error}
    reports = await trio.to_thread.run_sync(query_status_blocking,
                                            status_socket(engine.config.state))
    return {r.digest: r.last_error for r in reports or () if r.last_error}


def new_errors(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The errors of ``after`` that ``before`` did not have yet (pure)."""
    return [error for digest, error in sorted(after.items()) if before.get(digest) != error]


__all__ = ["new_errors", "read_errors"]
