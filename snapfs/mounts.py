"""Mount shapes for snapshots, as containerd's overlayfs snapshotter computes them, and the
helpers that perform and undo them.

Planning is pure: ``snapshot_mounts(kind, snapshot_dir, lowers, features)`` decides from the
snapshot alone. Performing goes through ``/bin/mount`` (``trio.run_process``), which also
handles ``rbind`` + ``ro`` (a bind mount needs a remount to become read-only). A kernel
mount's option string must fit in a page (4096 bytes); 128 absolute lowerdirs do not, so
``mount_all`` rewrites long overlay options relative to the lowerdirs' common directory and
runs the helper with that directory as its cwd (containerd's ``mountat`` does the same).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from snapfs.errors import Internal, InvalidArgument
from snapfs.snapshots import Kind, Mount

PAGE_SIZE = 4096
MNT_DETACH = 2
MOUNT_BINARY = "/bin/mount"
_INDEX_PARAM = Path("/sys/module/overlay/parameters/index")
_UID_MAP = Path("/proc/self/uid_map")
_IDENTITY_UID_MAP = ["0", "0", "4294967295"]
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class OverlayFeatures:
    index_off: bool = False  # the overlay module knows `index`: say off, as containerd does
    userxattr: bool = False  # inside a user namespace: whiteouts as user.overlay.* xattrs


def detect_overlay_features(
    index_param: Path = _INDEX_PARAM, uid_map: Path = _UID_MAP
) -> OverlayFeatures:
    try:
        in_userns = uid_map.read_text().split() != _IDENTITY_UID_MAP
    except OSError:
        in_userns = False
    return OverlayFeatures(index_off=index_param.exists(), userxattr=in_userns)


def snapshot_mounts(
    kind: Kind, snapshot_dir: Path, lowers: Sequence[Path], features: OverlayFeatures
) -> list[Mount]:
    """Mounts for a snapshot whose own dir is ``snapshot_dir`` (holding ``fs``, ``work``) and
    whose ancestors' content dirs are ``lowers``, direct parent first."""
    upper = snapshot_dir / "fs"
    if not lowers:
        flag = "ro" if kind == Kind.VIEW else "rw"
        return [Mount(type="bind", source=str(upper), options=(flag, "rbind"))]
    options: list[str] = []
    if features.index_off:
        options.append("index=off")
    if features.userxattr:
        options.append("userxattr")
    if kind == Kind.ACTIVE:
        options += [f"workdir={snapshot_dir / 'work'}", f"upperdir={upper}"]
    elif len(lowers) == 1:
        return [Mount(type="bind", source=str(lowers[0]), options=("ro", "rbind"))]
    for p in lowers:
        if ":" in str(p) or "," in str(p):
            raise InvalidArgument(f"overlay lowerdir {p}: path contains ':' or ','")
    options.append("lowerdir=" + ":".join(str(p) for p in lowers))
    return [Mount(type="overlay", source="overlay", options=tuple(options))]


def compact_overlay(mount: Mount) -> tuple[Mount, Path | None]:
    """An equivalent overlay mount whose dirs are relative to their common directory, and that
    directory (the cwd to mount from); ``(mount, None)`` when the options already fit."""
    if mount.type != "overlay" or len(",".join(mount.options)) < PAGE_SIZE:
        return mount, None
    dirs: list[str] = []
    for opt in mount.options:
        name, _, value = opt.partition("=")
        if name == "lowerdir":
            dirs += value.split(":")
        elif name in ("upperdir", "workdir"):
            dirs.append(value)
    base = Path(os.path.commonpath(dirs)) if dirs and all(d.startswith("/") for d in dirs) else None
    if base is None:
        raise InvalidArgument(f"overlay mount options too long ({len(mount.options)} options)")

    def rel(p: str) -> str:
        return os.path.relpath(p, base)

    out: list[str] = []
    for opt in mount.options:
        name, _, value = opt.partition("=")
        if name == "lowerdir":
            out.append("lowerdir=" + ":".join(rel(p) for p in value.split(":")))
        elif name in ("upperdir", "workdir"):
            out.append(f"{name}={rel(value)}")
        else:
            out.append(opt)
    compact = Mount(type=mount.type, source=mount.source, target=mount.target, options=tuple(out))
    if len(",".join(compact.options)) >= PAGE_SIZE:
        raise InvalidArgument(
            f"overlay mount on {base}: options still exceed {PAGE_SIZE} bytes when relative"
        )
    return compact, base


def mount_command(mount: Mount, target: Path) -> list[str]:
    cmd = [MOUNT_BINARY, "-t", mount.type]
    if mount.options:
        cmd += ["-o", ",".join(mount.options)]
    return [*cmd, mount.source, str(target)]


async def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Mount each of ``mounts`` on ``target`` in order (as containerd's ``mount.All``).

    On failure the mounts already made are undone before the error is raised."""
    done: list[Path] = []
    try:
        for m in mounts:
            dest = target / m.target.lstrip("/") if m.target else target
            compact, cwd = compact_overlay(m)
            res = await trio.run_process(
                mount_command(compact, dest),
                cwd=cwd,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if res.returncode != 0:
                why = res.stderr.decode(errors="replace").strip()
                raise Internal(f"mount {m.type} {m.source} on {dest} failed: {why}")
            done.append(dest)
    except BaseException:
        with trio.CancelScope(shield=True):
            for dest in reversed(done):
                await unmount(dest)
        raise


def _umount2(target: str, flags: int) -> int:
    """umount2(2); returns 0 or the errno."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def _unmount_sync(target: str) -> None:
    err = _umount2(target, 0)
    if err == errno.EBUSY:
        # Something still holds files open (a shell, a late reader): detach lazily so the
        # caller can carry on; the kernel frees it when the last user goes.
        err = _umount2(target, MNT_DETACH)
    if err and err != errno.EINVAL:  # EINVAL: not a mount point (already unmounted)
        raise Internal(f"unmount {target} failed: {os.strerror(err)}")


async def unmount(target: Path) -> None:
    """Unmount the topmost mount on ``target``; a no-op when nothing is mounted there."""
    await trio.to_thread.run_sync(_unmount_sync, str(target))


def mount_points() -> list[str]:
    """Current mount points of this process (``/proc/self/mountinfo``, unescaped)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            field = line.split(" ")[4]
            # mountinfo escapes space, tab, newline and backslash as \ooo octal.
            points.append(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field))
    return points


def is_mounted(target: Path) -> bool:
    """Whether something is mounted on ``target`` (os.path.ismount misses same-fs binds)."""
    return os.path.abspath(target) in mount_points()


async def unmount_all(target: Path) -> None:
    """Unmount every mount stacked on ``target``."""
    for _ in range(64):  # bounded: a mount that will not go must not loop us forever
        if not is_mounted(target):
            return
        await unmount(target)
    raise Internal(f"unmount {target}: still mounted after 64 attempts")
