"""Finding a container's command inside its rootfs before runc tries, as ``exec`` would.

runc reports a missing executable only once the container is being created, on stderr that
is the container's own, and with an exit status that says nothing; docker answers 127 (not
found) or 126 (found, not executable) with one line. So the command is resolved first:
``args[0]`` with a slash is taken relative to the working directory, a bare name is searched
along the container's ``PATH``. Symlinks are followed inside the rootfs (an absolute link
target is relative to the rootfs, as under chroot), never out of it.

Paths under a volume are not judged (what runc will mount there is not in the rootfs yet).
Must not write anything: it only reads the rootfs.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from pathlib import Path

from runtime.errors import CommandNotRunnable

MAX_LINKS = 40
NOT_FOUND, NOT_EXECUTABLE = 127, 126


def resolve_in_root(root: Path, path: str) -> Path | None:
    """``path`` (absolute, as seen inside ``root``) resolved to a host path, symlinks followed
    without leaving ``root``; None when some component does not exist."""
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = root.joinpath(*done, part)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def _under(path: str, dirs: Sequence[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def check_command(root: Path, command: str, *, env: Sequence[str], cwd: str,
                  volumes: Sequence[str] = ()) -> None:
    """Raise :class:`CommandNotRunnable` when ``command`` cannot be executed in ``root``."""
    if "/" in command:
        candidates = [posixpath.normpath(posixpath.join(cwd, command))]
    else:
        path_var = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), "")
        candidates = [posixpath.join(d or ".", command) if d.startswith("/")
                      else posixpath.join(cwd, d, command) for d in path_var.split(":")]
    for candidate in candidates:
        if _under(candidate, volumes):
            return  # mounted later by runc: let exec decide
        host = resolve_in_root(root, candidate)
        if host is None:
            continue
        try:
            st = os.stat(host)
        except OSError:
            continue
        if "/" not in command and (not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111):
            continue  # a PATH search skips what it cannot run, as execvp does
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            raise CommandNotRunnable(f'exec: "{command}": permission denied', NOT_EXECUTABLE)
        return
    if "/" in command:
        raise CommandNotRunnable(f'exec: "{command}": no such file or directory', NOT_FOUND)
    raise CommandNotRunnable(f'exec: "{command}": executable file not found in $PATH',
                             NOT_FOUND)


__all__ = ["check_command", "resolve_in_root"]
