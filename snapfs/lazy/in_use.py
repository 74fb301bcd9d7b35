"""Whether any mount, in any mount namespace, is built on a layer directory.

A lazy layer's FUSE directory and a materialised layer's directory may be dropped only once
no overlay names them as a lowerdir and no bind mount shows them; containers run in their own
mount namespaces, so every namespace's table is read (``snapfs.sys.mountinfo`` parses them).
Must not delete anything: the caller decides.
"""

from __future__ import annotations

from pathlib import Path

from snapfs.sys import mountinfo
from snapfs.sys.mountinfo import MountEntry


def mount_uses(line: str, path: Path, fuse_name: str | None = None) -> bool:
    """Whether one mountinfo line is a mount built on ``path``: an overlay naming it among its
    lowerdirs (absolute, or relative as ``mount_all`` writes long option strings), or a bind
    mount of it (for a directory of the FUSE mount, ``fuse_name`` is its name there). Pure."""
    entry = mountinfo.parse_line(line)
    return entry is not None and entry_uses(entry, path, fuse_name)


def entry_uses(entry: MountEntry, path: Path, fuse_name: str | None = None) -> bool:
    """:func:`mount_uses` for a parsed entry."""
    if entry.fstype == "overlay":
        for opt in entry.super_options.split(","):
            name, _, value = opt.partition("=")
            if name != "lowerdir":
                continue
            for lower in mountinfo.unescape(value).split(":"):
                lower = lower.rstrip("/")
                if lower == str(path) or (not lower.startswith("/") and
                                          str(path).endswith("/" + lower)):
                    return True
        return False
    root = entry.root
    if fuse_name is not None:
        return entry.fstype.startswith("fuse") and (root == f"/{fuse_name}"
                                                   or root.startswith(f"/{fuse_name}/"))
    # A bind's root is the path inside its filesystem, whose mount point we do not know:
    # the layer's own two last components (``layers/<64 hex>``) identify it.
    tail = "/" + "/".join(path.parts[-2:])
    return root.endswith(tail) or f"{tail}/" in root


def dir_in_use(path: Path, fuse_name: str | None = None) -> bool:
    """Whether any mount, in any mount namespace, is built on ``path`` (blocking)."""
    for table in mountinfo.namespace_tables():
        try:
            entries = mountinfo.read(table)
        except OSError:
            continue
        if any(entry_uses(e, path, fuse_name) for e in entries):
            return True
    return False


def dir_users(path: Path, fuse_name: str | None = None) -> int:
    """How many mount table entries, over every mount namespace, are built on ``path``
    (blocking): a new mount of it raises the count, whatever other mounts already use it."""
    count = 0
    for table in mountinfo.namespace_tables():
        try:
            entries = mountinfo.read(table)
        except OSError:
            continue
        count += sum(1 for e in entries if entry_uses(e, path, fuse_name))
    return count


__all__ = ["dir_in_use", "dir_users", "entry_uses", "mount_uses"]
