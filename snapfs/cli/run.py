"""``snapfs run``, ``snapfs ps`` and ``snapfs rm``: containers, with docker's flags and exit
codes (the container's own status; 125 when snapfs itself fails).

Must not hold logic beyond parse, build options, call, print: running is
``snapfs.app.run``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from runtime.spec import RunOptions, volumes_from
from snapfs.app.containers import STOP_TIMEOUT, list_containers, remove_container
from snapfs.app.engine import open_engine
from snapfs.app.progress import PullProgress
from snapfs.app.run import ProfileRequest
from snapfs.app.run import run as run_image
from snapfs.cli._common import SnapfsCommandError, add_engine_args, client_command, engine_config


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run a command in a new container",
        description="Pull IMAGE if it is not local (lazily where possible), then run it with runc.")
    add_engine_args(p)
    p.add_argument("--rm", action="store_true",
                   help="remove the container and what it wrote when it exits")
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
    p.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, metavar="SECONDS",
                   help="after forwarding SIGINT/SIGTERM, kill the container if it is still "
                   f"running this long (default {STOP_TIMEOUT:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="no pull progress")
    p.add_argument("--record-profile", type=Path, default=None, metavar="FILE",
                   help="write the files the container reads from its lazy layers, in order, "
                   "to FILE (for snapfs convert --prioritize); recorded by whichever process "
                   "serves the lazy layers: this one, or the daemon")
    p.add_argument("--record-seconds", type=float, default=None, metavar="N",
                   help="with --record-profile: stop recording after N seconds (default: when "
                   "the container exits)")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)

    p = subparsers.add_parser("ps", help="list containers started by snapfs run")
    add_engine_args(p)
    p.add_argument("-a", "--all", action="store_true", help="also containers that have exited")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=ps)

    p = subparsers.add_parser("rm", help="remove exited containers and what they wrote")
    add_engine_args(p)
    p.add_argument("container", nargs="+", help="name, id or unique id prefix")
    p.set_defaults(handler=rm)


@client_command
async def run(args: argparse.Namespace) -> int:
    opts = RunOptions(
        args=tuple(args.command) if args.command else None,
        entrypoint=(args.entrypoint,) if args.entrypoint else None,
        env=tuple(args.env), workdir=args.workdir, user=args.user, hostname=args.hostname,
        net=args.net, read_only=args.read_only, volumes=volumes_from(args.volume),
        tty=args.tty, rootless=os.geteuid() != 0,
    )
    profile = None
    if args.record_profile is not None:
        if not args.record_profile.parent.is_dir():  # say so before the container runs
            raise SnapfsCommandError(f"--record-profile {args.record_profile}: no such "
                                     "directory")
        profile = ProfileRequest(args.record_profile, args.record_seconds)
    elif args.record_seconds is not None:
        raise SnapfsCommandError("--record-seconds needs --record-profile")
    async with open_engine(engine_config(args)) as engine:
        return await run_image(engine, args.image, opts, name=args.name, remove=args.rm,
                               progress=PullProgress(quiet=args.quiet),
                               stop_timeout=args.stop_timeout, profile=profile)


@client_command
async def ps(args: argparse.Namespace) -> int:
    async with open_engine(engine_config(args)) as engine:
        records = [r for r in list_containers(engine) if args.all or r.status == "running"]
    if args.json:
        print(json.dumps([{**r.to_json(), "status": r.status} for r in records]))
        return 0
    print(f"{'CONTAINER ID':<18} {'NAME':<20} {'IMAGE':<40} {'STATUS':<14} CREATED")
    now = time.time()
    for r in records:
        status = r.status if r.exit_code is None else f"{r.status} ({r.exit_code})"
        print(f"{r.id:<18} {r.name:<20} {r.image:<40} {status:<14} {now - r.created:.0f}s ago")
    return 0


@client_command
async def rm(args: argparse.Namespace) -> int:
    async with open_engine(engine_config(args)) as engine:
        for ident in args.container:
            rec = await remove_container(engine, ident)
            print(rec.id)
    return 0
