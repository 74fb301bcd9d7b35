"""OCI bundle directories: ``config.json`` plus a record of the snapfs process that owns it.

::

    <bundle>/config.json   the runtime spec; root.path is the absolute rootfs path
    <bundle>/owner.json    {"pid": …, "start": …} of the snapfs process that created it

The owner record lets a later snapfs tell a bundle in use from one left behind by a killed
process (runtime.container.cleanup_stale). The start time (field 22 of /proc/<pid>/stat)
guards against the pid having been reused since.

Any number of snapfs processes create, run and clean up bundles in one directory at once, so
a bundle appears whole or not at all: it is written in ``.new-<pid>-<start>-<id>`` (owner
first) and renamed into place. A cleanup that saw a bundle dir before its owner record would
take it for a dead process's and delete it under its creator. The temp dir's name carries its
owner, so the leftovers of a process killed mid-creation are known as such (``new_owner``).

Must not run runc: it only writes, reads and removes bundle directories.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument

CONFIG = "config.json"
OWNER = "owner.json"
NEW_PREFIX = ".new-"


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    start: int | None


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_bundle(bundle: Path, spec: dict[str, Any]) -> Path:
    """Create the bundle directory ``bundle`` holding ``spec``; it must not exist yet."""
    root = spec.get("root", {}).get("path", "")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise InvalidArgument(f"bundle {bundle}: root.path must be absolute, got {root!r}")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    if bundle.exists():
        raise AlreadyExists(f"bundle {bundle}: already exists")
    pid = os.getpid()
    start = process_start_time(pid)
    temp = bundle.with_name(f"{NEW_PREFIX}{pid}-{start or 0}-{bundle.name}")
    temp.mkdir(mode=0o711)
    try:
        _write_atomic(temp / OWNER, json.dumps({"pid": pid, "start": start}).encode())
        _write_atomic(temp / CONFIG, json.dumps(spec, indent=1).encode())
        try:
            # Ids are random: the check above is for a caller's mistake, not for a race.
            os.rename(temp, bundle)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyExists(f"bundle {bundle}: already exists") from None
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return bundle


def new_owner(name: str) -> Owner | None:
    """The owner a bundle being built (``.new-<pid>-<start>-<id>``) is named for, else None."""
    if not name.startswith(NEW_PREFIX):
        return None
    pid, _, rest = name[len(NEW_PREFIX):].partition("-")
    start, _, _ = rest.partition("-")
    if not (pid.isdigit() and start.isdigit()):
        return None
    return Owner(int(pid), int(start) or None)


def read_owner(bundle: Path) -> Owner | None:
    """Who created ``bundle``, or None when it has no (readable) owner record."""
    try:
        data = json.loads((bundle / OWNER).read_text())
        return Owner(int(data["pid"]), None if data.get("start") is None else int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owner_alive(owner: Owner) -> bool:
    start = process_start_time(owner.pid)
    return start is not None and (owner.start is None or start == owner.start)


def is_stale(bundle: Path) -> bool:
    """Whether ``bundle`` (a bundle or one being built) was left by a process now gone."""
    owner = new_owner(bundle.name) if bundle.name.startswith(NEW_PREFIX) else read_owner(bundle)
    return owner is None or not owner_alive(owner)


def remove_bundle(bundle: Path) -> None:
    """Remove ``bundle`` and everything in it; a missing bundle is not an error.

    Refuses (FailedPrecondition) when something is mounted inside it, e.g. a rootfs someone
    mounted at ``<bundle>/rootfs``: deleting through a mount would delete the image's files.
    """
    try:
        children = list(bundle.iterdir())
    except FileNotFoundError:
        return
    for child in children:
        if child.is_dir() and not child.is_symlink() and os.path.ismount(child):
            raise FailedPrecondition(f"bundle {bundle}: {child.name} is still mounted")
    shutil.rmtree(bundle, onerror=_ignore_missing)


def _ignore_missing(func: Any, path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
