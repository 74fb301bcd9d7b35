"""``snapfs convert SRC DST``: push a lazily pullable (eStargz / zstd:chunked) copy of SRC.

Must not hold logic beyond parse, call, print: choosing the source (a registry or
``oci:DIR[:TAG]``) is ``snapfs.app.convert``'s, converting ``content.convert``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from snapfs.cli._common import client_command

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
                   help="registry credentials (default: the config's [registry] docker_config, "
                        "else $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("src", metavar="SRC",
                   help="image to convert: a registry reference, or oci:DIR[:TAG] (an OCI "
                   "image layout, as skopeo or umoci write)")
    p.add_argument("dst", metavar="DST", help="registry reference to push the result to")
    p.set_defaults(handler=convert)


@client_command
async def convert(args: argparse.Namespace) -> int:
    from snapfs.app.convert import convert as convert_image
    from snapfs.app.progress import PullProgress
    from snapfs.config import load_config

    progress = PullProgress(quiet=args.quiet, verbs=("converting", "converted"))
    digest = await convert_image(
        load_config(args.config, permissive=args.permissive), args.src, args.dst,
        format=args.format, prioritize_file=args.prioritize, chunk_size=args.chunk_size,
        platform=args.platform,
        all_platforms=args.all_platforms, docker_config=args.docker_config, progress=progress)
    progress.finish()
    print(digest)
    return 0
