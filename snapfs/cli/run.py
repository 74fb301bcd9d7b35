"""``snapfs run``: a container from an image in one command, with docker's flags and exit codes."""

from __future__ import annotations

import argparse
import os
from typing import Any

from runtime.spec import RunOptions, volumes_from
from snapfs.cli._common import add_engine_args, engine_config
from snapfs.containers import run as run_image
from snapfs.engine import open_engine
from snapfs.progress import PullProgress


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run a command in a new container",
        description="Pull IMAGE if it is not local (lazily where possible), then run it with runc.")
    add_engine_args(p)
    p.add_argument("--rm", action="store_true", help="remove the container's snapshot on exit")
    p.add_argument("--name", default=None)
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-w", "--workdir", default=None, metavar="DIR")
    p.add_argument("-u", "--user", default=None, metavar="USER[:GROUP]")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]")
    p.add_argument("--net", choices=("none", "host"), default="none")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("--entrypoint", default=None)
    p.add_argument("--hostname", default="snapfs")
    p.add_argument("-q", "--quiet", action="store_true", help="no pull progress")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    opts = RunOptions(
        args=tuple(args.command) if args.command else None,
        entrypoint=(args.entrypoint,) if args.entrypoint else None,
        env=tuple(args.env), workdir=args.workdir, user=args.user, hostname=args.hostname,
        net=args.net, read_only=args.read_only, volumes=volumes_from(args.volume),
        tty=args.tty, rootless=os.geteuid() != 0,
    )
    async with open_engine(engine_config(args)) as engine:
        return await run_image(engine, args.image, opts, name=args.name, remove=args.rm,
                               progress=PullProgress(quiet=args.quiet))
