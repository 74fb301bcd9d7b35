"""The ``snapfs`` command line.

Each subcommand lives in its own module in this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``handler``
(``(argparse.Namespace) -> int``; async handlers are run under trio). Modules
are discovered, so adding a command is adding a file. Must not hold logic, and
neither must a subcommand: it parses, builds a config, and calls into the library.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import pkgutil
import sys
from collections.abc import Sequence

import trio

from content.errors import ContentError
from snapfs import __version__
from snapfs.cli._common import SnapfsCommandError
from snapfs.cli._rootless import needs_userns, reexec_in_userns, subcommand

log = logging.getLogger("snapfs")

# As docker does: 125 means snapfs itself failed (bad input, unknown image, …), so that
# the container's own exit status (0-124, 126+) is never confused with ours.
EXIT_SNAPFS_ERROR = 125


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapfs", description="A lazy-pulling containerd snapshotter and content store."
    )
    parser.add_argument("--version", action="version", version=f"snapfs {__version__}")
    parser.add_argument("--log-level", default=None,
                        help="debug, info, warning or error (default: warning; info for serve)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    argv = sys.argv[1:] if argv is None else argv
    found = subcommand(argv)
    if found is not None and needs_userns(found[0]):
        # Without root, commands that mount run as root of their own user namespace.
        try:
            reexec_in_userns(argv, args)
        except (ContentError, OSError) as exc:
            print(f"snapfs: {exc}", file=sys.stderr)
            return EXIT_SNAPFS_ERROR
    level = (args.log_level or getattr(args, "default_log_level", "warning")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if inspect.iscoroutinefunction(handler):
            return int(trio.run(handler, args))
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    except ContentError as exc:
        print(f"snapfs: {exc}", file=sys.stderr)
        return EXIT_SNAPFS_ERROR
    except (SnapfsCommandError, OSError) as exc:
        # OSError: a path the user gave that is missing or unreadable, a full disk, … —
        # one line naming it, not a traceback.
        print(f"snapfs: {exc}", file=sys.stderr)
        return EXIT_SNAPFS_ERROR


def console_main() -> None:
    sys.exit(main())
