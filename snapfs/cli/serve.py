"""``snapfs serve``: run the snapshotter daemon (containerd proxy plugin + snapfs's own API).

Must not hold logic beyond parse, build the config, call: serving is ``snapfs.daemon``'s.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_CONFIG = 1


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the snapshotter daemon",
        description="Serve containerd's snapshots API on a unix socket. Flags override the "
        "config file (default /etc/snapfs/config.toml, ~/.config/snapfs/config.toml rootless).",
    )
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="TOML config file")
    p.add_argument("--root", default=None, metavar="DIR", help="snapshots, content and metadata")
    p.add_argument("--state", default=None, metavar="DIR", help="runtime state (sockets)")
    p.add_argument("--address", default=None, metavar="SOCK", help="gRPC unix socket path")
    p.add_argument("--metrics-address", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics here ('' turns them off)")
    # SUPPRESS: the top-level --log-level shares this dest; a None here would clobber it.
    p.add_argument("--log-level", default=argparse.SUPPRESS,
                   help="debug, info, warning or error (default: the config's, else info)")
    p.set_defaults(handler=serve, default_log_level="info")


async def serve(args: argparse.Namespace) -> int:
    from snapfs.config import ConfigError, load_config, with_overrides
    from snapfs.daemon.daemon import run_daemon

    try:
        config = load_config(args.config, permissive=args.permissive)
        config = with_overrides(
            config, root=args.root, state=args.state, address=args.address,
            metrics_address=args.metrics_address, log_level=args.log_level,
        )
    except ConfigError as exc:
        print(f"snapfs serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger().setLevel(config.debug.level.upper())
    await run_daemon(config)
    return 0
