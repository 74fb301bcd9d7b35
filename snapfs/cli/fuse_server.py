"""``snapfs fuse-server``: serve ``<root>/fuse`` for a daemon, outliving it.

Started by ``snapfs serve`` (or a daemon-less command, with ``--exit-when-unused``) on first
need (not meant to be run by hand); exits 0 at once when another one holds the state dir.
SIGTERM drains: it gives up its pid file and control socket (a fresh server takes new
mounts) and exits once no mount uses its layers.
Must not hold logic beyond parse and call: serving is ``snapfs.lazy.fuse_server``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fuse-server", help="serve the FUSE mount of lazy layers (started by snapfs serve)",
        description="Serve <root>/fuse for the daemon of this state dir, across its restarts.")
    p.add_argument("--root", type=Path, required=True, metavar="DIR")
    p.add_argument("--state", type=Path, required=True, metavar="DIR")
    p.add_argument("--read-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long a read waits for a daemon to fetch for it (then EIO)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N")
    p.add_argument("--window", type=int, default=None, metavar="BYTES",
                   help="neighbouring compressed bytes an on-demand miss fetches along")
    p.add_argument("--cache-max-size", type=int, default=0, metavar="BYTES",
                   help="bound of the chunk cache (0: unbounded)")
    p.add_argument("--cache-min-free", type=int, default=0, metavar="BYTES",
                   help="evict chunks to keep this much of the filesystem free")
    p.add_argument("--exit-when-unused", action="store_true",
                   help="exit once no snapfs process uses it and no mount its layers "
                        "(started by daemon-less commands)")
    p.add_argument("--log-level", default=argparse.SUPPRESS,
                   help="debug, info, warning or error (default: info)")
    p.set_defaults(handler=fuse_server, default_log_level="info")


async def fuse_server(args: argparse.Namespace) -> int:
    from content.chunkbudget import Limits
    from snapfs.lazy.fuse_server import ServerOptions
    from snapfs.lazy.server_run import run_fuse_server

    options = ServerOptions(root=args.root.absolute(), state=args.state.absolute(),
                            read_timeout=args.read_timeout, concurrency=args.concurrency,
                            limits=Limits(args.cache_max_size, args.cache_min_free),
                            exit_when_unused=args.exit_when_unused,
                            settings=tuple(sys.argv[1:]), idle_exit_alone=True)
    if args.window is not None:
        options = dataclasses.replace(options, window=args.window)
    return await run_fuse_server(options)
