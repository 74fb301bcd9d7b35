"""Flags every client command shares (config, root, state, daemon socket) and the config they
build. The daemon's own flags live in ``serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from snapfs.config import Config, load_config, with_overrides


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="TOML config file")
    p.add_argument("--root", default=None, metavar="DIR", help="snapfs root (content, snapshots)")
    p.add_argument("--state", default=None, metavar="DIR", help="runtime state (sockets, mounts)")
    p.add_argument("--address", default=None, metavar="SOCK",
                   help="daemon socket; used when a daemon serves there, else runs in-process")


def engine_config(args: argparse.Namespace) -> Config:
    return with_overrides(load_config(args.config), root=args.root, state=args.state,
                          address=args.address)
