"""How a daemon-less command serves its lazy layers: through the one ``snapfs fuse-server``
of the state dir, shared with every other command (and with a daemon started later).

A command's container must never lose its rootfs because another command exited, and N
commands at once must give what one daemon gives. So no command mounts ``<root>/fuse``
itself: the first one that needs it starts ``snapfs fuse-server --exit-when-unused``, the
others use that one (``snapfs.lazy.fuse_client.RemoteMount``), each answers the server's
range requests on a socket of its own (``<state>/fetch.d/<pid>.sock``, named in its watch;
``snapfs.lazy.fetch_peers``), and the server exits once no command watches it and no mount
uses its layers. Its log is ``<state>/fuse-server.log``.

Not in a user namespace (rootless): each command's mounts live in a namespace of its own, so
a shared server's mount would be invisible to the next command; there the command serves
its own mount (``None``: inline), which no other command can see or lose. ``[fuse] server =
false`` serves inline too.

Must not start anything: it says how (``snapfs.lazy.open`` does it).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

from snapfs.config import Config
from snapfs.lazy.open import FuseServerSpawn, fuse_server_spawn
from snapfs.sys.procs import alive
from snapfs.sys.userns import in_user_namespace

FETCH_DIR = "fetch.d"
LOG = "fuse-server.log"  # the shared server's log (a daemon's goes to the daemon's output)


def command_fuse_server(config: Config) -> FuseServerSpawn | None:
    """The shared FUSE server for this command, or None to serve the mount inline."""
    spawn = fuse_server_spawn(config)
    if spawn is None or in_user_namespace():
        return None
    sockets = config.state.absolute() / FETCH_DIR
    sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_dead_sockets(sockets)
    return replace(spawn, argv=[*spawn.argv, "--exit-when-unused"],
                   fetch=sockets / f"{os.getpid()}.sock",
                   log=config.state.absolute() / LOG)


def remove_dead_sockets(sockets: Path) -> None:
    """Fetch sockets of commands that were killed (a command removes its own as it exits)."""
    for path in sockets.glob("*.sock"):
        pid = path.stem
        if pid.isdigit() and not alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


__all__ = ["FETCH_DIR", "LOG", "command_fuse_server", "remove_dead_sockets"]
