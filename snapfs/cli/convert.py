"""``snapfs convert SRC DST``: push a lazily pullable (eStargz / zstd:chunked) copy of SRC.

Must not hold logic beyond parse, build the registry, call: converting is
``content.convert``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from content.chunkedtar import DEFAULT_CHUNK_SIZE
from content.convert import FORMATS, convert_image
from content.descriptor import parse_platform
from content.profilefile import read_profile
from content.registry import open_registry
from snapfs.app.imageops import parse_image_ref
from snapfs.config import load_config


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
                   help="registry credentials (default: the config's [registry] docker_config, "
                        "else $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.set_defaults(handler=convert)


async def convert(args: argparse.Namespace) -> int:
    src, dst = parse_image_ref(args.src), parse_image_ref(args.dst)
    platform = parse_platform(args.platform) if args.platform else None
    prioritize = await read_profile(args.prioritize) if args.prioritize else []
    config = load_config(args.config)
    docker_config = args.docker_config or config.registry.docker_config_path()
    async with open_registry(hosts_dir=config.registry.hosts_dir(), docker_config=docker_config,
                             timeout=config.registry.read_timeout,
                             connect_timeout=config.registry.connect_timeout) as registry:
        digest = await convert_image(registry, src, dst, format=args.format,
                                     prioritize=prioritize, chunk_size=args.chunk_size,
                                     platform=platform, all_platforms=args.all_platforms)
    print(digest)
    return 0
