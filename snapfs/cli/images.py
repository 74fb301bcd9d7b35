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
    p = subparsers.add_parser("rmi", help="remove local images and what only they used",
                              description="Untag IMAGEs, then remove every snapshot, blob, "
                              "chunk and layer directory no other image or container uses.")
    add_engine_args(p)
    p.add_argument("image", nargs="+", help="image reference, as `snapfs images` lists it")
    p.set_defaults(handler=rmi)


def images(args: argparse.Namespace) -> int:
    from snapfs.app import listing
    from snapfs.app.progress import human_bytes
    from snapfs.app.sizes import image_sizes
    from snapfs.client.quickstatus import query_status_blocking, status_socket

    config = engine_config(args)
    records = listing.images(config)
    reports = query_status_blocking(status_socket(config.state)) or []
    sizes = image_sizes(config.root, records, {r.layer_id: (r.state, r.total_bytes,
                                                            r.local_bytes) for r in reports})
    if args.json:
        print(json.dumps([{**r.to_json(), "size": sizes[r.name].uncompressed,
                           "compressed_size": sizes[r.name].compressed,
                           "local_size": sizes[r.name].local} for r in records]))
        return 0

    def h(n: int) -> str:
        return human_bytes(n).replace(" ", "")

    print(f"{'IMAGE':<50} {'DIGEST':<20} {'SIZE':>10} {'COMPRESSED':>10} {'LOCAL':>10} "
          f"{'LAZY':>5}")
    for r in records:
        size = sizes[r.name]
        print(f"{r.name:<50} {r.target.digest.short():<20} {h(size.uncompressed):>10} "
              f"{h(size.compressed):>10} {h(size.local):>10} "
              f"{'yes' if r.lazy or size.lazy else 'no':>5}")
    return 0


@client_command
async def rmi(args: argparse.Namespace) -> int:
    """Remove the image records, then what nothing uses any more (snapfs.app.gc)."""
    from snapfs.app.engine import open_engine
    from snapfs.app.gc import collect_garbage
    from snapfs.app.imageops import untag_images

    async with open_engine(engine_config(args)) as engine:
        for name in untag_images(engine, args.image):
            print(f"untagged: {name}")
        await collect_garbage(engine)
    return 0
