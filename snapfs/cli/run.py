"""``snapfs run``, ``snapfs ps`` and ``snapfs rm``: containers, with docker's flags and exit
codes (the container's own status; 125 when snapfs itself fails, 126 when the command cannot
be executed, 127 when it is not found).

Must not hold logic beyond parse, build the request, call, print: running is
``snapfs.app.run``'s, detaching ``snapfs.app.detach``'s. The library is imported inside the
handlers, so that parsing a command line loads none of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from snapfs.cli._common import (
    SnapfsCommandError,
    add_engine_args,
    add_lazy_arg,
    client_command,
    engine_config,
)

STOP_TIMEOUT = 10.0  # snapfs.app.records.STOP_TIMEOUT (docker's), without importing it
PULL_POLICIES = ("missing", "always", "never")  # snapfs.app.imageops.PULL_POLICIES


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run a command in a new container",
        description="Pull IMAGE if it is not local (lazily where possible), then run COMMAND "
        "(default: the image's) in it with runc. Exits with the container's status.")
    add_engine_args(p)
    add_lazy_arg(p)
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and print the container id; its output goes "
                   "to a log (snapfs logs)")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep stdin open (without it the container reads /dev/null)")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--rm", action="store_true",
                   help="remove the container and what it wrote when it exits")
    p.add_argument("--name", default=None, help="a name for the container (default: its id)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set a variable; NAME alone takes this shell's value (repeatable)")
    p.add_argument("--env-file", action="append", default=[], type=Path, metavar="FILE",
                   help="read NAME[=VALUE] lines from FILE (# comments); -e wins")
    p.add_argument("-w", "--workdir", default=None, metavar="DIR",
                   help="working directory inside the container")
    p.add_argument("-u", "--user", default=None, metavar="USER[:GROUP]",
                   help="user (name or uid) and group to run as")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="bind-mount the host path SRC at DST (repeatable)")
    p.add_argument("--net", choices=("none", "host"), default="none",
                   help="network: none (own empty namespace, default) or host")
    p.add_argument("--read-only", action="store_true", help="mount the rootfs read-only")
    p.add_argument("--entrypoint", default=None, help="override the image's entrypoint")
    p.add_argument("--hostname", default="snapfs", help="the container's hostname")
    p.add_argument("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
                   help="pull this platform of a multi-platform image (default: this host)")
    p.add_argument("--pull", choices=PULL_POLICIES, default="missing",
                   help="pull the image: missing (default), always, or never")
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
    p.add_argument("image", help="image reference, e.g. 127.0.0.1:5000/app:1")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="command and arguments (default: the image's)")
    p.set_defaults(handler=run)

    p = subparsers.add_parser("ps", help="list containers started by snapfs run",
                              description="List running containers (-a: every one kept).")
    add_engine_args(p)
    p.add_argument("-a", "--all", action="store_true", help="also containers that have exited")
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    p.set_defaults(handler=ps)

    p = subparsers.add_parser("rm", help="remove containers and what they wrote",
                              description="Remove exited containers (-f: running ones too).")
    add_engine_args(p)
    p.add_argument("-f", "--force", action="store_true",
                   help="kill a running container (SIGKILL) first")
    p.add_argument("container", nargs="+", help="name, id or unique id prefix")
    p.set_defaults(handler=rm)


@client_command
async def run(args: argparse.Namespace) -> int:
    from snapfs.app.detach import pull_first, start_detached
    from snapfs.app.run import run_request
    from snapfs.app.runrequest import ConfigSource, ProfileRequest, RunRequest, run_options

    profile = None
    if args.record_profile is not None:
        if not args.record_profile.parent.is_dir():  # say so before the container runs
            raise SnapfsCommandError(f"--record-profile {args.record_profile}: no such "
                                     "directory")
        profile = ProfileRequest(args.record_profile, args.record_seconds)
    elif args.record_seconds is not None:
        raise SnapfsCommandError("--record-seconds needs --record-profile")
    if args.detach and profile is not None:
        raise SnapfsCommandError("--record-profile cannot be used with -d")
    opts = run_options(command=args.command, entrypoint=args.entrypoint, env=args.env,
                       env_files=args.env_file, workdir=args.workdir, user=args.user,
                       hostname=args.hostname, net=args.net, read_only=args.read_only,
                       volumes=args.volume, tty=args.tty)
    request = RunRequest(
        args.image, opts, name=args.name, remove=args.rm, pull=args.pull,
        platform=args.platform, interactive=args.interactive, stop_timeout=args.stop_timeout,
        quiet=args.quiet, profile=profile,
        config=ConfigSource(args.config, args.root, args.state, args.address,
                            args.permissive, args.lazy))
    if not args.detach:
        return await run_request(request)
    request = await pull_first(request)
    print(start_detached(request, log_level=args.log_level or "WARNING"))
    return 0


def ps(args: argparse.Namespace) -> int:
    from snapfs.app import listing

    records = listing.containers(engine_config(args), all=args.all)
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
    from snapfs.app.control import remove

    config = engine_config(args)
    for ident in args.container:
        print(await remove(config, ident, force=args.force))
    return 0
