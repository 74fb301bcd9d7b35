"""The ``snapfs`` command line.

Each subcommand lives in its own module in this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``handler``
(``(argparse.Namespace) -> int``; async handlers are run under trio). Modules
are discovered, so adding a command is adding a file. Must not hold logic, and
neither must a subcommand: it parses, builds a config, and calls into the library.

Start-up is part of the interface (``snapfs --help``, ``ps``, ``images`` and ``status``
answer at once): a subcommand module imports only argparse-level things at module level and
the library inside its handler, and this module imports neither trio nor the library
(``tests/snapfs/test_cli_startup.py`` holds that).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from content.errors import ContentError
from snapfs import __version__
from snapfs.cli._common import SnapfsCommandError
from snapfs.cli._rootless import needs_userns, reexec_in_userns, subcommand

log = logging.getLogger("snapfs")

# As docker does: 125 means snapfs itself failed (bad input, unknown image, …), so that
# the container's own exit status (0-124, 126+) is never confused with ours.
EXIT_SNAPFS_ERROR = 125
EXIT_USAGE = 2
LOG_LEVEL_HELP = "debug, info, warning or error (default: warning; info for serve)"
PERMISSIVE_HELP = ("unknown config sections and keys (a file for a newer snapfs) are one "
                   "warning each, not an error")


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown flag is reported with this command's usage (the
    top-level parser would print its own), and ``--log-level`` is accepted after the
    subcommand as well as before it."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n"
                              f"See '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapfs", description="A lazy-pulling containerd snapshotter and content store.")
    parser.add_argument("--version", action="version", version=f"snapfs {__version__}")
    parser.add_argument("--log-level", default=None, help=LOG_LEVEL_HELP)
    parser.add_argument("--permissive", action="store_true", help=PERMISSIVE_HELP)
    # Not "command": `snapfs run IMAGE COMMAND…` has a positional of that name.
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND",
                                parser_class=CommandParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    for command in sub.choices.values():
        if not any("--log-level" in a.option_strings for a in command._actions):
            # SUPPRESS: shares the top-level flag's dest; a None here would clobber it.
            command.add_argument("--log-level", default=argparse.SUPPRESS, help=LOG_LEVEL_HELP)
        if "config" in {a.dest for a in command._actions}:
            command.add_argument("--permissive", action="store_true", default=argparse.SUPPRESS,
                                 help=PERMISSIVE_HELP)
    return parser


def _run(handler: Any, args: argparse.Namespace) -> int:
    if inspect.iscoroutinefunction(handler):
        import trio  # only commands that need it pay for it

        return int(trio.run(handler, args))
    return int(handler(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
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
        return _run(handler, args)
    except KeyboardInterrupt:
        return 130
    except (ContentError, SnapfsCommandError, OSError) as exc:
        # OSError: a path the user gave that is missing or unreadable, a full disk, … —
        # one line naming it, not a traceback. A command that cannot be executed carries
        # docker's status for it (126, 127).
        print(f"snapfs: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", EXIT_SNAPFS_ERROR))


def console_main() -> None:
    sys.exit(main())
