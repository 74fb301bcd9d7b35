"""``snapfs logs``, ``stop``, ``kill`` and ``exec``: acting on a running container, as docker's
commands of those names do.

Must not hold logic beyond parse, call, print: all of it is ``snapfs.app.control``'s. The
library is imported inside the handlers, so that parsing a command line loads none of it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from snapfs.cli._common import SnapfsCommandError, add_engine_args, client_command, engine_config

STOP_TIMEOUT = 10.0  # snapfs.app.records.STOP_TIMEOUT (docker's), without importing it


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "logs", help="print a detached container's output",
        description="Print what a container started with `snapfs run -d` wrote (stdout and "
        "stderr, in order).")
    add_engine_args(p)
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the container exits")
    p.add_argument("container", help="name, id or unique id prefix")
    p.set_defaults(handler=logs)

    p = subparsers.add_parser(
        "stop", help="stop running containers",
        description="Send each container its stop signal (the image's StopSignal, else "
        "SIGTERM), then SIGKILL if it is still running after the timeout.")
    add_engine_args(p)
    p.add_argument("-t", "--time", type=float, default=STOP_TIMEOUT, metavar="SECONDS",
                   help=f"seconds to wait before killing it (default {STOP_TIMEOUT:g})")
    p.add_argument("container", nargs="+", help="name, id or unique id prefix")
    p.set_defaults(handler=stop)

    p = subparsers.add_parser("kill", help="send a signal to running containers",
                              description="Send SIGNAL (default KILL) to each container.")
    add_engine_args(p)
    p.add_argument("-s", "--signal", default="KILL", metavar="SIGNAL",
                   help="signal name (KILL, SIGTERM, …) or number (default KILL)")
    p.add_argument("container", nargs="+", help="name, id or unique id prefix")
    p.set_defaults(handler=kill)

    p = subparsers.add_parser("exec", help="run a command in a running container",
                              description="Run COMMAND in a running container; exits with "
                              "its status (126 not executable, 127 not found).")
    add_engine_args(p)
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep stdin open (without it the command reads /dev/null)")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set a variable; NAME alone takes this shell's value (repeatable)")
    p.add_argument("-w", "--workdir", default=None, metavar="DIR",
                   help="working directory inside the container")
    p.add_argument("container", help="name, id or unique id prefix")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    p.set_defaults(handler=exec_)


def logs(args: argparse.Namespace) -> int:
    from snapfs.app.control import write_logs

    write_logs(engine_config(args), args.container, sys.stdout.buffer, follow=args.follow)
    return 0


@client_command
async def stop(args: argparse.Namespace) -> int:
    from snapfs.app.control import stop_container

    for ident in args.container:
        print((await stop_container(engine_config(args), ident, args.time)).id)
    return 0


@client_command
async def kill(args: argparse.Namespace) -> int:
    from runtime.spec import parse_signal
    from snapfs.app.control import kill_container

    signum = parse_signal(args.signal, "--signal")
    for ident in args.container:
        print((await kill_container(engine_config(args), ident, signum)).id)
    return 0


@client_command
async def exec_(args: argparse.Namespace) -> int:
    from snapfs.app.control import exec_in_container

    if not args.command:
        raise SnapfsCommandError("exec: no command given (snapfs exec CONTAINER COMMAND…)")
    return await exec_in_container(engine_config(args), args.container, args.command,
                                   tty=args.tty, interactive=args.interactive, env=args.env,
                                   workdir=args.workdir)
