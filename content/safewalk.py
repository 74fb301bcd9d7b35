"""Walking a directory tree that hostile input names, without ever leaving it.

A layer tar is hostile input: :func:`clean_name` rejects member names (and hardlink targets)
that are absolute or climb out with ``..``; :class:`SafeTree` walks a path one component at a
time from the tree's root fd with ``O_NOFOLLOW``, resolving a symlinked parent directory
inside the tree (absolute targets are relative to its root) and refusing one that climbs
out. Nothing is ever opened through a symlink. Used by ``content.unpack``; must not create,
change or remove anything itself (a missing directory is made only through the caller's
``mkdir``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from content.errors import InvalidArgument

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 40  # as the kernel's path walk

# Called with the fd of the directory to create a missing component in, and the real
# components of the directory to create (its name last).
MakeDir = Callable[[int, tuple[str, ...]], None]


def clean_name(name: str, what: str) -> tuple[str, ...]:
    """The components of a member name, rejecting absolute names and ``..`` escapes."""
    if name.startswith("/"):
        raise InvalidArgument(f"{what}: absolute path {name!r} in layer")
    norm = posixpath.normpath(name)
    if norm == "..":
        raise InvalidArgument(f"{what}: path {name!r} escapes the layer root")
    if norm.startswith("../"):
        raise InvalidArgument(f"{what}: path {name!r} escapes the layer root")
    return tuple(p for p in norm.split("/") if p not in ("", "."))


class SafeTree:
    """A directory tree walked safely from its root fd."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root, DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def dir_fd(self, parts: Sequence[str], what: str,
               mkdir: MakeDir | None = None) -> tuple[int, tuple[str, ...]]:
        """:meth:`open_dir`'s fd and real components, the fd the caller's to close."""
        with self.open_dir(parts, what, mkdir) as (fd, real):
            return os.dup(fd), real

    @contextlib.contextmanager
    def open_dir(
        self, parts: Sequence[str], what: str, mkdir: MakeDir | None = None, *,
        follow: bool = True,
    ) -> Iterator[tuple[int, tuple[str, ...]]]:
        """An fd of directory ``parts`` (symlinks resolved inside the tree) and its real
        components. Missing directories are created through ``mkdir`` when given, else
        FileNotFoundError propagates. With ``follow=False`` a symlink or a non-directory
        on the way raises NotADirectoryError."""
        fds = [os.dup(self.fd)]
        real: list[str] = []
        pending = list(reversed(parts))
        links = 0
        try:
            while pending:
                comp = pending.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if not real:
                        raise InvalidArgument(
                            f"{what}: path leaves the layer root through a symlink"
                        )
                    real.pop()
                    os.close(fds.pop())
                    continue
                try:
                    fd = os.open(comp, DIR_FLAGS, dir_fd=fds[-1])
                except FileNotFoundError:
                    if mkdir is None:
                        raise
                    mkdir(fds[-1], (*real, comp))
                    fd = os.open(comp, DIR_FLAGS, dir_fd=fds[-1])
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fds[-1], follow_symlinks=False)
                    if not follow:
                        raise NotADirectoryError(errno.ENOTDIR, "not a directory", comp) from exc
                    if not stat.S_ISLNK(st.st_mode):
                        raise InvalidArgument(
                            f"{what}: parent {'/'.join((*real, comp))!r} is not a directory"
                        ) from exc
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise InvalidArgument(f"{what}: too many symlinks in path") from exc
                    target = os.readlink(comp, dir_fd=fds[-1])
                    if target.startswith("/"):
                        # Absolute links mean the container's root, which is this tree.
                        for extra in fds[1:]:
                            os.close(extra)
                        del fds[1:]
                        real.clear()
                    pending.extend(reversed(target.split("/")))
                    continue
                fds.append(fd)
                real.append(comp)
            yield fds[-1], tuple(real)
        finally:
            for fd in fds:
                os.close(fd)


__all__ = ["DIR_FLAGS", "MAX_SYMLINKS", "MakeDir", "SafeTree", "clean_name"]
