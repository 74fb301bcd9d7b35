"""``snapfs images``, ``snapfs rmi`` and ``snapfs ps``."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from snapfs.cli._common import add_engine_args, engine_config
from snapfs.containers import list_containers, parse_image_ref
from snapfs.engine import Engine, open_engine
from snapfs.progress import human_bytes
from snapfs.snapshots import Kind


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("images", help="list local images")
    add_engine_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=images)
    p = subparsers.add_parser("rmi", help="remove local images and their unused snapshots")
    add_engine_args(p)
    p.add_argument("image", nargs="+")
    p.set_defaults(handler=rmi)
    p = subparsers.add_parser("ps", help="list containers started by snapfs run")
    add_engine_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=ps)


async def images(args: argparse.Namespace) -> int:
    async with open_engine(engine_config(args)) as engine:
        records = engine.images.list()
    if args.json:
        print(json.dumps([r.to_json() for r in records]))
        return 0
    print(f"{'IMAGE':<50} {'DIGEST':<20} {'SIZE':>10} {'LAZY':>5}")
    for r in records:
        print(f"{r.name:<50} {r.target.digest.short():<20} "
              f"{human_bytes(r.target.size):>10} {'yes' if r.lazy else 'no':>5}")
    return 0


async def rmi(args: argparse.Namespace) -> int:
    """Remove the image records, then every snapshot of theirs no other image or container uses."""
    async with open_engine(engine_config(args)) as engine:
        for name in args.image:
            engine.images.delete(str(parse_image_ref(name)))
        await _remove_unused_snapshots(engine)
    return 0


async def _remove_unused_snapshots(engine: Engine) -> None:
    keep = {str(c) for r in engine.images.list() for c in r.chain_ids}
    while True:  # children first, as containerd's GC does, until nothing more can go
        infos = await engine.snapshots.list()
        parents = {i.parent for i in infos}
        unused = [i.name for i in infos
                  if i.kind == Kind.COMMITTED and i.name not in keep and i.name not in parents]
        if not unused:
            return
        for name in unused:
            await engine.snapshots.remove(name)


async def ps(args: argparse.Namespace) -> int:
    async with open_engine(engine_config(args)) as engine:
        records = list_containers(engine)
    if args.json:
        print(json.dumps([r.to_json() for r in records]))
        return 0
    print(f"{'CONTAINER ID':<18} {'NAME':<20} {'IMAGE':<50} CREATED")
    now = time.time()
    for r in records:
        print(f"{r.id:<18} {r.name:<20} {r.image:<50} {now - r.created:.0f}s ago")
    return 0
