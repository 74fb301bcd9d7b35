"""``snapfs pull IMAGE``: lazily where the layers allow, natively otherwise.

Must not hold logic beyond parse, call, print: pulling is ``snapfs.app``'s.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from snapfs.cli._common import add_engine_args, add_lazy_arg, client_command, engine_config


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "pull", help="pull an image (lazily where its layers allow)")
    add_engine_args(p)
    add_lazy_arg(p)
    p.add_argument("--platform", default=None, help="os/arch[/variant] (default: this host)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("image", help="image reference, e.g. 127.0.0.1:5000/app:1")
    p.set_defaults(handler=pull)


@client_command
async def pull(args: argparse.Namespace) -> int:
    from content.descriptor import parse_platform
    from snapfs.app.engine import open_engine
    from snapfs.app.imageops import parse_image_ref, pull_image
    from snapfs.app.progress import PullProgress

    ref = parse_image_ref(args.image)
    platform = parse_platform(args.platform) if args.platform else None
    async with open_engine(engine_config(args)) as engine:
        result = await pull_image(engine, ref, platform,
                                  progress=PullProgress(quiet=args.quiet or args.json))
        stats = engine.registry.stats
    if args.json:
        print(json.dumps({
            "image": result.record.name, "digest": str(result.record.target.digest),
            "layers": len(result.layers), "lazy": result.lazy_layers,
            "native": result.native_layers, "existing": result.existing_layers,
            "bytes_fetched": stats.bytes_received, "requests": stats.requests,
        }))
    elif not args.quiet:
        print(f"{result.record.name}: {result.record.target.digest} "
              f"({result.lazy_layers} lazy, {result.native_layers} native, "
              f"{result.existing_layers} already present)")
    return 0
