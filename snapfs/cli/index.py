"""``snapfs index IMAGE``: build (and push) side indexes for an unmodified gzip image.

Must not hold logic beyond parse, call, print: indexing is ``snapfs.app.gzindex``'s.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from snapfs.cli._common import client_command

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size_arg(text: str) -> int:
    """``4MiB``, ``512k``, ``10485760`` → bytes (more than 0)."""
    n = size_or_zero_arg(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB)")
    return n


def size_or_zero_arg(text: str) -> int:
    """A size, where 0 is allowed (``--min-layer-size 0``: index every layer)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB, or 0)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "index", help="index an image's gzip layers for lazy pulling, without converting it",
        description="Stream each gzip layer of IMAGE once and build its side index (file "
                    "table, gzip checkpoints, span digests). With --push the indexes are "
                    "stored next to the image as an OCI artifact whose subject is its "
                    "manifest; the image itself (and its digest) is unchanged.")
    p.add_argument("--push", action="store_true", help="push the indexes as a referrer")
    # The default lives in content.gzindex (imported only when the command runs).
    p.add_argument("--span", type=size_arg, default=None, metavar="SIZE",
                   help="compressed bytes between checkpoints (default: 128KiB)")
    p.add_argument("--min-layer-size", type=size_or_zero_arg, default=10 << 20,
                   metavar="SIZE", help="smaller layers are left out: fetched whole "
                   "(default: 10MiB; 0: index every layer)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML config file (for [registry] config_path)")
    p.add_argument("--docker-config", type=Path, default=None, metavar="FILE",
                   help="registry credentials")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("image", metavar="IMAGE", help="registry reference")
    p.set_defaults(handler=index)


@client_command
async def index(args: argparse.Namespace) -> int:
    from snapfs.app.gzindex import index_image_with_config
    from snapfs.config import load_config

    result = await index_image_with_config(
        load_config(args.config), args.image, push=args.push, span=args.span,
        min_layer_size=args.min_layer_size, docker_config=args.docker_config)
    rows = [{"layer": str(li.layer), "size": li.layer_size, "index": str(li.digest),
             "index_size": len(li.index), "checkpoints": li.checkpoints, "files": li.files}
            for li in result.layers]
    if args.json:
        print(json.dumps({"manifest": str(result.manifest), "layers": rows,
                          "skipped": [{"layer": str(d), "why": w} for d, w in result.skipped],
                          "artifact": str(result.artifact) if result.artifact else None}))
        return 0
    for li in result.layers:
        print(f"{str(li.layer)[:19]}  {li.layer_size:>12}  index {len(li.index)} bytes "
              f"({100 * len(li.index) / li.layer_size:.2f}%), {li.checkpoints} checkpoints, "
              f"{li.files} files")
    for d, why in result.skipped:
        print(f"{str(d)[:19]}  skipped: {why}")
    if result.artifact:
        print(f"pushed {result.artifact}")
    return 0
