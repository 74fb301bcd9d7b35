"""Rootless snapfs: a command that needs mounts re-executes itself in a user namespace.

Without root, ``snapfs pull/run/ps/rm/images/rmi/status/demo/serve/stop/kill/exec``
(everything that opens the engine, mounts or runs runc; not ``convert`` or ``logs``)
re-execute themselves as::

    unshare --user --map-root-user --mount --propagation private -- python -P -c <main> ARGS…

Inside, the process is root of its own user namespace (only the invoking user's uid and gid
are mapped, to 0) and owns a private mount namespace, so it can mount overlayfs (with
``userxattr``, whiteouts as ``user.overlay.*`` xattrs) and FUSE (``/dev/fuse`` must be
openable by the user: distributions ship it 0666) and run runc rootless. Everything keys off
:func:`in_user_namespace` (the uid map), not euid, which is 0 in there.

Consequences worth knowing:

- Mounts live in the command's mount namespace and die with it; nothing leaks to the host.
  So rootless mode is embedded-only for mounts: a rootless ``snapfs serve`` still answers the
  snapshotter API on its socket, but its FUSE and overlay mounts are visible only inside its
  own namespace, and client commands in another namespace cannot use them (they refuse to
  use such a daemon rather than hand out mounts that do not exist for them).
- ``unshare`` execs in place (no ``--fork``): the PID, signals and exit status are ours.
- The config is resolved before re-executing, with the rootless defaults
  (``$XDG_RUNTIME_DIR/snapfs``, ``~/.local/share/snapfs``), and passed down as explicit
  ``--root``/``--state``/``--config`` flags, because inside euid is 0 and the defaults would
  otherwise be root's.

Must not mount or open the engine itself: it only rewrites the command line and execs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from snapfs.config import default_config_path, load_config, with_overrides
from snapfs.errors import FailedPrecondition
from snapfs.sys.userns import in_user_namespace

# Commands that mount something or open the embedded engine, which mounts the FUSE tree as
# soon as a lazy layer is recorded (images and ps included) and cleans up after killed runs.
USERNS_COMMANDS = frozenset({"pull", "run", "rm", "rmi", "status", "demo", "serve", "ps",
                             "images", "stop", "kill", "exec"})
MAX_USER_NAMESPACES = Path("/proc/sys/user/max_user_namespaces")
# The re-executed interpreter runs the CLI on the arguments after ``-c``'s program text; -P
# keeps the working directory off sys.path (a ./snapfs there must not shadow the package).
_BOOTSTRAP = "import sys; from snapfs.cli import main; sys.exit(main(sys.argv[1:]))"


def needs_userns(command: str | None, *, euid: int | None = None,
                 in_userns: bool | None = None) -> bool:
    """Whether ``command`` must re-execute in a user namespace before it runs."""
    if command not in USERNS_COMMANDS:
        return False
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return False  # root, or already root of our own user namespace
    return not (in_user_namespace() if in_userns is None else in_userns)


def subcommand(argv: Sequence[str]) -> tuple[str, int] | None:
    """The subcommand of a ``snapfs`` command line and its index (global options come first).

    Read from argv because ``args.command`` may be shadowed (``snapfs run IMAGE COMMAND…``).
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--log-level":
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg, i
    return None


def with_config_flags(argv: Sequence[str], *, root: Path, state: Path,
                      config_file: Path | None) -> list[str]:
    """``argv`` with the resolved config passed as flags right after the subcommand.

    The user's own flags come later and so still win; they resolve to the same values.
    """
    found = subcommand(argv)
    if found is None:
        raise ValueError(f"no subcommand in {list(argv)!r}")
    i = found[1] + 1
    extra = ["--root", str(root), "--state", str(state)]
    if config_file is not None:
        extra += ["--config", str(config_file)]
    return [*argv[:i], *extra, *argv[i:]]


def unshare_argv(argv: Sequence[str], *, unshare: str = "unshare",
                 python: str = sys.executable) -> list[str]:
    """The command line that runs ``snapfs ARGV`` as root of a new user + mount namespace."""
    return [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private",
            "--", python, "-P", "-c", _BOOTSTRAP, *argv]


def check_userns_allowed(max_namespaces: Path = MAX_USER_NAMESPACES) -> None:
    """FailedPrecondition naming the setting when this kernel forbids user namespaces."""
    try:
        limit = int(max_namespaces.read_text().strip())
    except (OSError, ValueError):
        return  # no such knob: let unshare say what is wrong
    if limit == 0:
        raise FailedPrecondition(
            f"rootless snapfs: user namespaces are disabled ({max_namespaces} is 0); "
            "run as root or raise user.max_user_namespaces")


def _resolved_argv(argv: Sequence[str], args: argparse.Namespace) -> list[str]:
    if not hasattr(args, "root") or not hasattr(args, "state"):
        return list(argv)  # e.g. demo: it makes its own config under a temporary directory
    config_arg: Path | None = getattr(args, "config", None)
    config = with_overrides(load_config(config_arg, permissive=args.permissive),
                            root=args.root, state=args.state)
    config_file = config_arg
    if config_file is None:
        # Inside, the default file would be root's /etc/snapfs/config.toml; /dev/null reads as
        # an empty config, i.e. the defaults, which the flags above then pin to the user's.
        default = default_config_path()
        config_file = default if default.is_file() else Path(os.devnull)
    return with_config_flags(argv, root=config.root, state=config.state,
                             config_file=config_file)


def reexec_in_userns(argv: Sequence[str], args: argparse.Namespace) -> NoReturn:
    """Replace this process with ``snapfs ARGV`` inside a new user + mount namespace."""
    check_userns_allowed()
    unshare = shutil.which("unshare")
    if unshare is None:
        raise FailedPrecondition("rootless snapfs: 'unshare' (util-linux) not found on PATH; "
                                 "it is needed to enter a user namespace")
    cmd = unshare_argv(_resolved_argv(argv, args), unshare=unshare)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(unshare, cmd)


__all__ = ["USERNS_COMMANDS", "check_userns_allowed", "in_user_namespace", "needs_userns",
           "reexec_in_userns", "subcommand", "unshare_argv", "with_config_flags"]
