"""Whether this process runs inside a user namespace: the one place that decides it.

Decided by the uid map, not by euid: inside ``unshare --map-root-user`` euid is 0 yet the
process may not write cgroups, mount sysfs or map ids it was not given. Must not re-execute
anything or read configuration (``snapfs.cli._rootless`` does that).
"""

from __future__ import annotations

from pathlib import Path

UID_MAP = Path("/proc/self/uid_map")
_IDENTITY_UID_MAP = ["0", "0", "4294967295"]


def in_user_namespace(uid_map: Path | None = None) -> bool:
    """True unless this process's uid map is the initial namespace's identity map."""
    try:
        return (uid_map or UID_MAP).read_text().split() != _IDENTITY_UID_MAP
    except OSError:
        return False


__all__ = ["UID_MAP", "in_user_namespace"]
