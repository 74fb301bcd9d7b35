"""``snapfs images`` and ``snapfs rmi``: the local image table.

Must not hold logic beyond parse, call, print: listing is ``snapfs.app.listing``'s,
untagging and GC ``snapfs.app.imageops``'s. The library is imported inside the handlers, so
that parsing a command line loads none of it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from snapfs.cli._common import add_engine_args, client_command, engine_config


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("images", help="list local images",
                              description="List the images pulled into this root.")
    add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    p.set_defaults(handler=images)
    p = subparsers.add_parser("rmi", help="remove local images and their unused snapshots",
                              description="Untag IMAGEs, then remove every snapshot no other "
                              "image or container uses.")
    add_engine_args(p)
    p.add_argument("image", nargs="+", help="image reference, as `snapfs images` lists it")
    p.set_defaults(handler=rmi)


def images(args: argparse.Namespace) -> int:
    from snapfs.app import listing
    from snapfs.app.progress import human_bytes

    records = listing.images(engine_config(args))
    if args.json:
        print(json.dumps([r.to_json() for r in records]))
        return 0
    print(f"{'IMAGE':<50} {'DIGEST':<20} {'SIZE':>10} {'LAZY':>5}")
    for r in records:
        print(f"{r.name:<50} {r.target.digest.short():<20} "
              f"{human_bytes(r.target.size):>10} {'yes' if r.lazy else 'no':>5}")
    return 0


@client_command
async def rmi(args: argparse.Namespace) -> int:
    """Remove the image records, then every snapshot of theirs no other image or container uses."""
    from snapfs.app.engine import open_engine
    from snapfs.app.imageops import remove_unused_snapshots, untag_images

    async with open_engine(engine_config(args)) as engine:
        for name in untag_images(engine, args.image):
            print(f"untagged: {name}")
        await remove_unused_snapshots(engine)
    return 0
