"""Resolving an image's ``User`` against the rootfs's /etc/passwd and /etc/group.

Forms accepted, as docker and containerd accept them: ``uid``, ``uid:gid``, ``name``,
``name:group``, ``uid:group`` and ``name:gid``. The rootfs is untrusted image content, so
its files are opened through :func:`resolve_in_root`, which evaluates symlinks as if the
rootfs were ``/`` and never lets one lead outside it.

Must not open a file of the rootfs except through :func:`resolve_in_root`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InvalidArgument

# Linux's own limit (MAXSYMLINKS is 40); the point is only to stop loops.
_MAX_SYMLINKS = 40


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExecUser:
    """Who the container's process runs as."""

    uid: int
    gid: int
    # The primary gid first, then the groups listing the user as a member (containerd ≥ 1.6.18
    # includes the primary gid, so that setgroups() never drops it: CVE-2023-25173).
    additional_gids: tuple[int, ...]
    name: str | None = None
    home: str = "/"


def resolve_in_root(root: Path, path: str) -> Path:
    """``path`` interpreted inside ``root``: symlinks and ``..`` never escape ``root``.

    Absolute symlink targets are taken relative to ``root``, and ``..`` stops at it, the way
    the kernel would resolve them after a chroot. The result may not exist.
    """
    root = Path(os.path.abspath(root))
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many levels of symbolic links in {path!r}", str(root))
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return root.joinpath(*resolved)


def _read_root_file(root: Path, path: str) -> str | None:
    """The text of ``path`` inside ``root``, or None when it does not exist."""
    real = resolve_in_root(root, path)
    try:
        # O_NOFOLLOW: the last component was already resolved, so a symlink here means the
        # tree changed under us; refuse rather than follow it.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return f.read()


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _numeric(s: str) -> int | None:
    return int(s) if s.isdigit() else None


def resolve_user_in(
    user: str, passwd: list[PasswdEntry], groups: list[GroupEntry]
) -> ExecUser:
    """Pure resolution of ``user`` against parsed passwd and group entries."""
    user_part, _, group_part = user.partition(":")
    user_part = user_part or "0"
    uid_n = _numeric(user_part)
    entry: PasswdEntry | None = None
    if uid_n is None:
        entry = next((p for p in passwd if p.name == user_part), None)
        if entry is None:
            raise InvalidArgument(
                f"unable to find user {user_part}: no matching entries in passwd file"
            )
    else:
        # A numeric uid need not exist in passwd; when it does, it brings its gid and name.
        entry = next((p for p in passwd if p.uid == uid_n), None)
    uid = entry.uid if entry is not None else (uid_n or 0)
    gid = entry.gid if entry is not None else 0
    if group_part:
        gid_n = _numeric(group_part)
        if gid_n is not None:
            gid = gid_n
        else:
            group = next((g for g in groups if g.name == group_part), None)
            if group is None:
                raise InvalidArgument(
                    f"unable to find group {group_part}: no matching entries in group file"
                )
            gid = group.gid
    gids = [gid]
    if entry is not None:
        for g in groups:
            if entry.name in g.members and g.gid not in gids:
                gids.append(g.gid)
    return ExecUser(
        uid=uid,
        gid=gid,
        additional_gids=tuple(gids),
        name=entry.name if entry is not None else None,
        home=entry.home if entry is not None else "/",
    )


def resolve_user(rootfs: Path, user: str) -> ExecUser:
    """Resolve ``user`` (an image's ``User`` or a ``-u`` flag) against ``rootfs``."""
    passwd = parse_passwd(_read_root_file(rootfs, "/etc/passwd") or "")
    groups = parse_group(_read_root_file(rootfs, "/etc/group") or "")
    return resolve_user_in(user, passwd, groups)
