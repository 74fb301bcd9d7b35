"""Mount shapes for snapshots, as containerd's overlayfs snapshotter computes them (pure).

``snapshot_mounts(kind, snapshot_dir, lowers, features)`` decides from the snapshot alone. A
kernel mount's option string must fit in a page (4096 bytes); 128 absolute lowerdirs do not,
so ``compact_overlay`` rewrites long overlay options relative to the lowerdirs' common
directory, to be mounted from there (containerd's ``mountat`` does the same). Performing the
mounts is ``snapfs.snapshot.mounting``. Must not mount anything; it reads the host only in
``detect_overlay_features``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from snapfs.errors import InvalidArgument
from snapfs.snapshot.types import Kind, Mount
from snapfs.sys.userns import UID_MAP, in_user_namespace

PAGE_SIZE = 4096
_INDEX_PARAM = Path("/sys/module/overlay/parameters/index")


@dataclass(frozen=True, slots=True)
class OverlayFeatures:
    index_off: bool = False  # the overlay module knows `index`: say off, as containerd does
    userxattr: bool = False  # inside a user namespace: whiteouts as user.overlay.* xattrs


def detect_overlay_features(
    index_param: Path = _INDEX_PARAM, uid_map: Path = UID_MAP
) -> OverlayFeatures:
    return OverlayFeatures(index_off=index_param.exists(), userxattr=in_user_namespace(uid_map))


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
