"""``snapfs status``: the lazy layers, their state and what fetching them has cost.

Where the numbers come from (the daemon, or this process) is ``snapfs.app.status``'s; this
module parses the flags and prints a table or JSON.

Must not decide where the numbers come from; it only parses flags and prints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snapfs.cli._common import add_engine_args, engine_config

if TYPE_CHECKING:
    from snapfs.client.reports import LayerReport


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
    rows = [("LAYER", "IMAGE", "FORMAT", "STATE", "LOCAL/TOTAL", "FETCHED", "REQUESTS", "HITS",
             "WINDOW")]
    for r in reports:
        rows.append((r.layer_id[:12], r.image, r.format, r.state if r.healthy else "unhealthy",
                     f"{human(r.local_bytes)}/{human(r.total_bytes)}", human(r.bytes_fetched),
                     str(r.requests), str(r.cache_hits),
                     # The locality window: neighbours read / neighbours brought along.
                     f"{r.window_hits}/{r.window_chunks}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
             for row in rows]
    # A failed read names registry, repository and blob: the one place a container's bare
    # "Input/output error" is explained.
    lines += [f"{r.layer_id[:12]}: last error: {r.last_error}" for r in reports if r.last_error]
    return "\n".join(lines)


def status(args: argparse.Namespace) -> int:
    from snapfs.app.status import layer_reports

    reports = layer_reports(engine_config(args))
    if args.json:
        print(json.dumps([r.to_json() for r in reports]))
    else:
        print(table(reports))
    return 0
