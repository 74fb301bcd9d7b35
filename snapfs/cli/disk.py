"""``snapfs df`` and ``snapfs prune``: what the root holds on disk, and giving back what
nothing uses.

Must not hold logic: the report is ``snapfs.app.df``'s, the collection ``snapfs.app.gc``'s.
The library is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from snapfs.cli._common import add_engine_args, client_command, engine_config

if TYPE_CHECKING:
    from snapfs.app.df import DiskReport


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("df", help="show disk usage: images, layers, chunk cache, blobs",
                              description="What the root holds: images (uncompressed, "
                              "compressed, local), layers (lazy or local, bytes held against "
                              "their size), the chunk cache (used, limit, evictions), content "
                              "blobs, and what `snapfs prune` would reclaim.")
    add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.set_defaults(handler=df)
    p = subparsers.add_parser("prune", help="remove what no image, container or pull uses",
                              description="Remove snapshots no image names, blobs no image "
                              "references, chunks no lazy layer needs, layer directories no "
                              "layer record names and abandoned downloads; never what a "
                              "running container or a pull in flight uses.")
    add_engine_args(p)
    p.set_defaults(handler=prune)


def _h(n: int) -> str:
    from snapfs.app.progress import human_bytes

    return human_bytes(n).replace(" ", "")


def summary(report: DiskReport) -> str:
    """The human-readable report (pure)."""
    lines = [f"{'TYPE':<14} {'COUNT':>6} {'SIZE':>10} {'LOCAL':>10}  DETAIL"]
    lines.append(f"{'images':<14} {len(report.images):>6} "
                 f"{_h(sum(i.uncompressed for i in report.images)):>10} "
                 f"{_h(sum(i.local for i in report.images)):>10}  "
                 f"compressed {_h(sum(i.compressed for i in report.images))}")
    for kind in ("native", "lazy", "local"):
        rows = [r for r in report.layers if r.kind == kind]
        lines.append(f"{'layers ' + kind:<14} {len(rows):>6} "
                     f"{_h(sum(r.total_bytes for r in rows)):>10} "
                     f"{_h(sum(r.local_bytes for r in rows)):>10}")
    c = report.cache
    limit = _h(c["limit"]) if c["limit"] else "none"
    lines.append(f"{'chunk cache':<14} {c['chunks']:>6} {_h(c['bytes']):>10} "
                 f"{_h(c['bytes']):>10}  limit {limit}, {c['evictions']} evictions")
    lines.append(f"{'content blobs':<14} {report.content['blobs']:>6} "
                 f"{_h(report.content['bytes']):>10} {_h(report.content['bytes']):>10}")
    r = report.reclaimable
    lines.append(f"{'reclaimable':<14} {'':>6} {_h(r['bytes']):>10} {'':>10}  "
                 f"{r['snapshots']} snapshots, {r['blobs']} blobs, {r['chunks']} chunks")
    return "\n".join(lines)


@client_command
async def df(args: argparse.Namespace) -> int:
    from snapfs.app.df import disk_report

    report = await disk_report(engine_config(args))
    print(json.dumps(report.to_json()) if args.json else summary(report))
    return 0


@client_command
async def prune(args: argparse.Namespace) -> int:
    from snapfs.app.df import disk_report
    from snapfs.app.engine import open_engine
    from snapfs.app.gc import collect_garbage

    config = engine_config(args)
    before = (await disk_report(config)).totals["bytes"]
    async with open_engine(config) as engine:
        done = await collect_garbage(engine, ingest_age=0)
    after = (await disk_report(config)).totals["bytes"]
    print(f"removed {len(done.snapshots)} snapshots, {done.blobs} blobs, "
          f"{done.ingests} partial downloads")
    print(f"reclaimed {_h(max(before - after, 0))}")
    return 0
