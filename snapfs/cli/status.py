"""``snapfs status``: the lazy layers, their state and what fetching them has cost.

With a daemon serving, the numbers are the daemon's (asked on ``<state>/status.sock``).
Without one, this process mounts the lazy layers itself: states and local bytes are
read from disk, and the counters (requests, fetched bytes, hits) start at zero.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from snapfs.app.engine import daemon_alive, open_engine
from snapfs.cli._common import add_engine_args, client_command, engine_config
from snapfs.client.reports import LayerReport, collect_reports
from snapfs.client.status import query_status, status_socket


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show lazy layers: state, bytes local/total, requests, cache hits",
        description="Each lazy layer's state (lazy, fetching, local), bytes held locally "
        "against its size, bytes fetched, Range requests made and chunk cache hits.")
    add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    p.set_defaults(handler=status)


def human(n: int) -> str:
    """1536 → "1.5K" (pure)."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(reports: Sequence[LayerReport]) -> str:
    """The human-readable table (pure)."""
    rows = [("LAYER", "IMAGE", "FORMAT", "STATE", "LOCAL/TOTAL", "FETCHED", "REQUESTS", "HITS")]
    for r in reports:
        rows.append((r.layer_id[:12], r.image, r.format, r.state if r.healthy else "unhealthy",
                     f"{human(r.local_bytes)}/{human(r.total_bytes)}", human(r.bytes_fetched),
                     str(r.requests), str(r.cache_hits)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows)


@client_command
async def status(args: argparse.Namespace) -> int:
    config = engine_config(args)
    if await daemon_alive(config):
        reports = await query_status(status_socket(config.state))
    else:
        async with open_engine(config, mode="embedded") as engine:
            reports = collect_reports(engine.lazy) if engine.lazy is not None else []
    if args.json:
        print(json.dumps([r.to_json() for r in reports]))
    else:
        print(table(reports))
    return 0
