"""The one parser of ``/proc/<pid>/mountinfo``, and the questions asked of it.

Each line is ``id parent major:minor root mount-point options [optional…] - fstype source
super-options``; the kernel escapes space, tab, newline and backslash in paths as ``\\ooo``.
Everything here reads the table and never stats a mount point: a stat of a FUSE mount would
wait for a reply that the asking thread may be the one to send, and a dead FUSE server's root
may still stat fine from the kernel's cache.

Must not mount, unmount, or know what snapfs keeps in the directories it is asked about.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SELF = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo path field as the path it names."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of a mountinfo table, paths unescaped."""

    device: str  # "major:minor"
    root: str  # the path inside the mounted filesystem that is mounted here
    mount_point: str
    fstype: str
    source: str
    super_options: str  # filesystem options (overlay's lowerdir=… lives here)


def parse_line(line: str) -> MountEntry | None:
    """One mountinfo line; None for a line that is not one (pure)."""
    fields = line.split()
    try:
        sep = fields.index("-", 6)
    except ValueError:
        return None
    rest = [*fields[sep + 1:], "", "", ""]
    return MountEntry(device=fields[2], root=unescape(fields[3]),
                      mount_point=unescape(fields[4]), fstype=rest[0], source=unescape(rest[1]),
                      super_options=rest[2])


def parse(text: str) -> list[MountEntry]:
    """Every entry of a mountinfo text, in table order (pure)."""
    return [e for e in map(parse_line, text.splitlines()) if e is not None]


def read(path: Path = SELF) -> list[MountEntry]:
    """The mount table of this process (or of the process whose mountinfo ``path`` is)."""
    return parse(path.read_text(encoding="utf-8", errors="surrogateescape"))


def mount_points(entries: Iterable[MountEntry] | None = None) -> list[str]:
    """Mount points, in table order (this process's table by default)."""
    return [e.mount_point for e in (read() if entries is None else entries)]


def is_mounted(target: Path | str) -> bool:
    """Whether something is mounted on ``target`` (os.path.ismount misses same-fs binds)."""
    return os.path.abspath(target) in mount_points()


def mounts_under(root: Path | str) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order to unmount them in)."""
    prefix = os.path.realpath(root)
    found = {p for p in mount_points() if p == prefix or p.startswith(prefix + "/")}
    return sorted(found, key=len, reverse=True)


def mount_device(table: str | Iterable[MountEntry], mountpoint: Path | str) -> str | None:
    """``major:minor`` of the last (topmost) mount at ``mountpoint`` in a mountinfo text or
    parsed table, if any (pure)."""
    found = None
    for e in parse(table) if isinstance(table, str) else table:
        if e.mount_point == str(mountpoint):
            found = e.device
    return found


def namespace_tables() -> list[Path]:
    """One mountinfo file per mount namespace this process can see (its own first)."""
    out = [SELF]
    seen: set[str] = set()
    with contextlib.suppress(OSError):
        seen.add(os.readlink("/proc/self/ns/mnt"))
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{entry.name}/ns/mnt")
        except OSError:
            continue  # gone, or not ours to see
        if ns not in seen:
            seen.add(ns)
            out.append(Path(entry.path) / "mountinfo")
    return out


__all__ = ["MountEntry", "is_mounted", "mount_device", "mount_points", "mounts_under",
           "namespace_tables", "parse", "parse_line", "read", "unescape"]
