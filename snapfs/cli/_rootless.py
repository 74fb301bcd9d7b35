"""Rootless snapfs: a command that needs mounts re-executes itself in a user namespace.

Without root, ``snapfs pull/run/ps/rm/images/rmi/prune/df/status/demo/serve/stop/kill/exec``
(everything that opens the engine, mounts or runs runc; not ``convert`` or ``logs``)
re-execute themselves as::

    unshare --user --map-root-user [--map-users=S,1,N --map-groups=S,1,N] --mount \
            --propagation private -- python -P -c <main> ARGS…

Inside, the process is root of its own user namespace and owns a private mount namespace.
The invoking user's uid and gid are mapped to 0; when the user has ranges in ``/etc/subuid``
and ``/etc/subgid`` and ``newuidmap``/``newgidmap`` (package uidmap) are installed, ids
1…N are mapped to them as well (``unshare --map-users`` runs those setuid helpers), so files
owned by other ids keep their owners in unpacked and lazy layers and ``run -u`` takes any of
them. Without ranges only root is mapped: other owners show as 65534 and ``-u`` takes only
0, which commands that pull or run say in one notice line.
The process so it can mount overlayfs (with
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
import pwd
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from snapfs.config import default_config_path, load_config, with_overrides
from snapfs.errors import FailedPrecondition
from snapfs.sys.userns import SUBGID, SUBUID, in_user_namespace, subid_range

# Commands that mount something or open the embedded engine, which mounts the FUSE tree as
# soon as a lazy layer is recorded (images and ps included) and cleans up after killed runs.
USERNS_COMMANDS = frozenset({"pull", "run", "rm", "rmi", "prune", "df", "status", "demo",
                             "serve", "ps", "images", "stop", "kill", "exec"})
MAX_USER_NAMESPACES = Path("/proc/sys/user/max_user_namespaces")
# Commands whose results the id mapping changes visibly (owners, -u): they print the notice.
NOTICE_COMMANDS = frozenset({"pull", "run", "demo", "serve"})
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


@dataclass(frozen=True, slots=True)
class IdMapping:
    """What the new namespace maps besides root: the user's subordinate uids and gids
    (``(start, count)`` each), or None and the reason for the root-only notice."""

    uids: tuple[int, int] | None
    gids: tuple[int, int] | None
    reason: str = ""


def plan_id_mapping(user: str, uid: int, *, subuid: Path = SUBUID, subgid: Path = SUBGID,
                    which: Callable[[str], str | None] = shutil.which) -> IdMapping:
    """Map the user's subordinate ranges when both exist and the helpers are installed."""
    uids, gids = subid_range(subuid, user, uid), subid_range(subgid, user, uid)
    if uids is None or gids is None:
        missing = " and ".join(str(f) for f, r in ((subuid, uids), (subgid, gids)) if r is None)
        return IdMapping(None, None, f"no range for {user} in {missing}")
    helpers = [h for h in ("newuidmap", "newgidmap") if which(h) is None]
    if helpers:
        return IdMapping(None, None, f"{' and '.join(helpers)} not found (package uidmap)")
    return IdMapping(uids, gids)


def root_only_notice(user: str, reason: str) -> str:
    """The one line saying only root is mapped, why, and the fix."""
    return (f"snapfs: rootless: only your own uid and gid are mapped ({reason}): files owned "
            f"by other ids show as 65534 and run -u takes only 0; to map a range: usermod "
            f"--add-subuids 100000-165535 --add-subgids 100000-165535 {user}")


def unshare_argv(argv: Sequence[str], *, unshare: str = "unshare",
                 python: str = sys.executable, mapping: IdMapping | None = None) -> list[str]:
    """The command line that runs ``snapfs ARGV`` as root of a new user + mount namespace,
    with ids 1…N mapped to ``mapping``'s ranges when it has them."""
    ranges = []
    if mapping is not None and mapping.uids is not None and mapping.gids is not None:
        ranges = [f"--map-users={mapping.uids[0]},1,{mapping.uids[1]}",
                  f"--map-groups={mapping.gids[0]},1,{mapping.gids[1]}"]
    return [unshare, "--user", "--map-root-user", *ranges, "--mount", "--propagation",
            "private", "--", python, "-P", "-c", _BOOTSTRAP, *argv]


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


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())  # no passwd entry: subuid lines may name the uid itself


def reexec_in_userns(argv: Sequence[str], args: argparse.Namespace) -> NoReturn:
    """Replace this process with ``snapfs ARGV`` inside a new user + mount namespace."""
    check_userns_allowed()
    unshare = shutil.which("unshare")
    if unshare is None:
        raise FailedPrecondition("rootless snapfs: 'unshare' (util-linux) not found on PATH; "
                                 "it is needed to enter a user namespace")
    user = _user_name()
    mapping = plan_id_mapping(user, os.getuid())
    found = subcommand(argv)
    if mapping.uids is None and found is not None and found[0] in NOTICE_COMMANDS:
        print(root_only_notice(user, mapping.reason), file=sys.stderr)
    cmd = unshare_argv(_resolved_argv(argv, args), unshare=unshare, mapping=mapping)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(unshare, cmd)


__all__ = ["NOTICE_COMMANDS", "USERNS_COMMANDS", "IdMapping", "check_userns_allowed",
           "in_user_namespace", "needs_userns", "plan_id_mapping", "reexec_in_userns",
           "root_only_notice", "subcommand", "unshare_argv", "with_config_flags"]
