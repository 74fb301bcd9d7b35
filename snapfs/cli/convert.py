"""``snapfs convert SRC DST``: push a lazily pullable (eStargz / zstd:chunked) copy of SRC.

Must not hold logic beyond parse, build the registry, call: converting is
``content.convert``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# content.convert_layers.FORMATS and content.chunkedtar.DEFAULT_CHUNK_SIZE, written out so
# that `snapfs convert --help` loads no converter (tests/snapfs/test_cli_startup.py checks).
FORMATS = ("estargz", "zstd:chunked")
DEFAULT_CHUNK_SIZE = 4 << 20


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "convert", help="convert an image to eStargz or zstd:chunked and push it",
        description="Convert SRC's layers to a lazily pullable format and push the image as "
                    "DST; prints the new manifest (or index) digest. Loopback registries are "
                    "spoken to over plain HTTP.")
    p.add_argument("--format", choices=FORMATS, default="estargz",
                   help="target layer format (default: estargz)")
    p.add_argument("--prioritize", type=Path, default=None, metavar="FILE",
                   help="file with one path a line (e.g. a recorded startup profile): these "
                        "files go first in their layers, before the prefetch landmark")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="BYTES",
                   help=f"largest chunk of a file (default: {DEFAULT_CHUNK_SIZE})")
    p.add_argument("--platform", default=None, help="os/arch[/variant] (default: this host)")
    p.add_argument("--all-platforms", action="store_true",
                   help="convert every image of a multi-platform index and push an index")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML config file (for [registry] config_path)")
    p.add_argument("--docker-config", type=Path, default=None, metavar="FILE",
                   help="registry credentials (default: $DOCKER_CONFIG/config.json or "
                        "~/.docker/config.json, when present)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.set_defaults(handler=convert)


async def convert(args: argparse.Namespace) -> int:
    from content.auth import docker_config_path
    from content.convert import convert_image
    from content.descriptor import parse_platform
    from content.profilefile import read_profile
    from content.registry import open_registry
    from snapfs.app.imageops import parse_image_ref
    from snapfs.config import load_config

    src, dst = parse_image_ref(args.src), parse_image_ref(args.dst)
    platform = parse_platform(args.platform) if args.platform else None
    prioritize = await read_profile(args.prioritize) if args.prioritize else []
    config = load_config(args.config)
    hosts_dir = Path(config.registry.config_path) if config.registry.config_path else None
    async with open_registry(hosts_dir=hosts_dir,
                             docker_config=docker_config_path(args.docker_config)) as registry:
        digest = await convert_image(registry, src, dst, format=args.format,
                                     prioritize=prioritize, chunk_size=args.chunk_size,
                                     platform=platform, all_platforms=args.all_platforms)
    print(digest)
    return 0
