"""User namespaces: whether this process runs in one, the ids it maps, and the subordinate id
ranges (``/etc/subuid``, ``/etc/subgid``) a user may map into a new one.

Being in one is decided by the uid map, not by euid: inside ``unshare --map-root-user`` euid
is 0 yet the process may not write cgroups, mount sysfs or map ids it was not given. The maps
say which ids exist in here: only 0 (the invoking user) when only root is mapped, or 0 plus
the user's subordinate range (1…65536 → 100000…165535, as podman lays it out) when
``newuidmap``/``newgidmap`` wrote them. Must not re-execute anything or read configuration
(``snapfs.cli._rootless`` does that). Pure apart from reading the files named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UID_MAP = Path("/proc/self/uid_map")
GID_MAP = Path("/proc/self/gid_map")
SETGROUPS = Path("/proc/self/setgroups")
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
_IDENTITY_UID_MAP = ["0", "0", "4294967295"]
_IDENTITY = (0, 0, 4294967295)


@dataclass(frozen=True, slots=True)
class IdRange:
    """One line of a uid/gid map: ``count`` ids from ``inside`` are ``outside`` in the parent."""

    inside: int
    outside: int
    count: int

    def __contains__(self, id_: object) -> bool:
        return isinstance(id_, int) and self.inside <= id_ < self.inside + self.count


def in_user_namespace(uid_map: Path | None = None) -> bool:
    """True unless this process's uid map is the initial namespace's identity map."""
    try:
        return (uid_map or UID_MAP).read_text().split() != _IDENTITY_UID_MAP
    except OSError:
        return False


def parse_id_map(text: str) -> tuple[IdRange, ...]:
    """The lines of a ``/proc/<pid>/uid_map`` or ``gid_map``."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            out.append(IdRange(int(fields[0]), int(fields[1]), int(fields[2])))
    return tuple(out)


def id_map(path: Path) -> tuple[IdRange, ...]:
    """This process's uid or gid map (``UID_MAP``, ``GID_MAP``); the identity if unreadable."""
    try:
        return parse_id_map(path.read_text())
    except OSError:
        return (IdRange(*_IDENTITY),)


def uid_ranges() -> tuple[IdRange, ...]:
    """The uids that exist in this process's user namespace (read at call time)."""
    return id_map(UID_MAP)


def gid_ranges() -> tuple[IdRange, ...]:
    return id_map(GID_MAP)


def is_mapped(id_: int, ranges: tuple[IdRange, ...]) -> bool:
    return any(id_ in r for r in ranges)


def setgroups_allowed(path: Path | None = None) -> bool:
    """Whether setgroups(2) may be called here ("deny" after an unprivileged gid_map write)."""
    try:
        return (path or SETGROUPS).read_text().strip() != "deny"
    except OSError:
        return True


def parse_subid(text: str, name: str, uid: int) -> tuple[int, int] | None:
    """The first ``(start, count)`` of ``name`` (or its numeric id) in subuid/subgid text."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (name, str(uid)):
            continue
        if fields[1].isdigit() and fields[2].isdigit() and int(fields[2]) > 0:
            return int(fields[1]), int(fields[2])
    return None


def subid_range(path: Path, name: str, uid: int) -> tuple[int, int] | None:
    """``parse_subid`` of ``path`` (``SUBUID``, ``SUBGID``); None when it is missing."""
    try:
        return parse_subid(path.read_text(), name, uid)
    except (OSError, UnicodeDecodeError):
        return None


__all__ = ["GID_MAP", "SETGROUPS", "SUBGID", "SUBUID", "UID_MAP", "IdRange", "gid_ranges",
           "id_map", "in_user_namespace", "is_mapped", "parse_id_map", "parse_subid",
           "setgroups_allowed", "subid_range", "uid_ranges"]
