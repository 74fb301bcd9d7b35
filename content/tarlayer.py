"""Deterministic layer tars built in memory from a spec, or from a real directory tree.

The same entries always give the same bytes (PAX format, empty user/group names, mtimes
as given), so test images have stable digests. Extended attributes travel as
``SCHILY.xattr.<name>`` PAX records, as GNU tar, containerd and Docker write them; OCI
whiteouts are the ``.wh.<name>`` and ``<dir>/.wh..wh..opq`` empty files of the image spec.

Must not write files: tars are built in memory.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from content.errors import InvalidArgument

EntryType = Literal[
    "file", "dir", "symlink", "hardlink", "char", "block", "fifo", "whiteout", "opaque"
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR_PAX_PREFIX = "SCHILY.xattr."

_TARTYPE: Mapping[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "whiteout": tarfile.REGTYPE,
    "opaque": tarfile.REGTYPE,
}
_DEFAULT_MODE: Mapping[str, int] = {"dir": 0o755, "symlink": 0o777}


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar entry. ``path`` is relative to the layer root (``etc/passwd``).

    For ``whiteout``, ``path`` names the file being deleted (written as ``dir/.wh.name``);
    for ``opaque``, it names the directory made opaque (``dir/.wh..wh..opq``).
    ``mode`` holds permission bits (setuid/setgid/sticky included); None means 0644,
    0755 for directories, 0777 for symlinks.
    """

    path: str
    type: EntryType = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


def tar_name(entry: Entry) -> str:
    """The member name ``entry`` gets in the archive."""
    path = entry.path.strip("/")
    if entry.type == "whiteout":
        head, _, base = path.rpartition("/")
        return f"{head}/{WHITEOUT_PREFIX}{base}" if head else f"{WHITEOUT_PREFIX}{base}"
    if entry.type == "opaque":
        return f"{path}/{OPAQUE_MARKER}" if path else OPAQUE_MARKER
    return path


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    if entry.type not in _TARTYPE:
        raise InvalidArgument(f"tar entry {entry.path!r}: unknown type {entry.type!r}")
    if not entry.path.strip("/") and entry.type not in ("dir", "opaque"):
        raise InvalidArgument(f"tar entry {entry.path!r}: empty path")
    info = tarfile.TarInfo(tar_name(entry))
    info.type = _TARTYPE[entry.type]
    mode = entry.mode if entry.mode is not None else _DEFAULT_MODE.get(entry.type, 0o644)
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = entry.mtime
    if entry.type in ("symlink", "hardlink"):
        if not entry.linkname:
            raise InvalidArgument(f"tar entry {entry.path!r}: {entry.type} without linkname")
        info.linkname = entry.linkname
    if entry.type in ("char", "block"):
        info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.type == "file":
        info.size = len(entry.data)
    if entry.xattrs:
        # tarfile writes surrogate-escaped text back as the original bytes (hdrcharset=BINARY).
        info.pax_headers = {
            XATTR_PAX_PREFIX + k: v.decode("utf-8", "surrogateescape")
            for k, v in sorted(entry.xattrs.items())
        }
    return info


def build_tar(entries: Iterable[Entry]) -> bytes:
    """A PAX tar of ``entries`` in the order given (order matters: later entries win)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in entries:
            info = _tarinfo(entry)
            tf.addfile(info, io.BytesIO(entry.data) if entry.type == "file" else None)
    return buf.getvalue()


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _from_stat(
    relpath: str,
    kind: EntryType,
    st: os.stat_result,
    xattrs: Mapping[str, bytes],
    *,
    data: bytes = b"",
    linkname: str = "",
) -> Entry:
    dev = kind in ("char", "block")
    return Entry(
        relpath, kind, data=data, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        mtime=int(st.st_mtime), linkname=linkname,
        devmajor=os.major(st.st_rdev) if dev else 0, devminor=os.minor(st.st_rdev) if dev else 0,
        xattrs=xattrs,
    )


def entries_from_dir(root: Path) -> list[Entry]:
    """Entries for every file under ``root`` (not ``root`` itself), parents before children,
    names sorted, so a rootfs directory becomes a reproducible layer.

    Keeps modes, owners, mtimes, symlink targets, xattrs, devices and fifos; the second and
    later paths of a multiply-linked file become hardlinks to the first. Sockets are
    skipped: a tar cannot hold them.
    """
    out: list[Entry] = []
    seen: dict[tuple[int, int], str] = {}

    def walk(dirpath: Path, rel: str) -> None:
        for name in sorted(os.listdir(dirpath)):
            path = dirpath / name
            relpath = f"{rel}{name}"
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            xattrs = {} if fmt == stat.S_IFLNK else _xattrs(path)
            if fmt == stat.S_IFDIR:
                out.append(_from_stat(relpath, "dir", st, xattrs))
                walk(path, relpath + "/")
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                out.append(_from_stat(relpath, "hardlink", st, xattrs, linkname=seen[key]))
                continue
            if st.st_nlink > 1:
                seen[key] = relpath
            if fmt == stat.S_IFREG:
                out.append(_from_stat(relpath, "file", st, xattrs, data=path.read_bytes()))
            elif fmt == stat.S_IFLNK:
                out.append(_from_stat(relpath, "symlink", st, xattrs, linkname=os.readlink(path)))
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                kind: EntryType = "char" if fmt == stat.S_IFCHR else "block"
                out.append(_from_stat(relpath, kind, st, xattrs))
            elif fmt == stat.S_IFIFO:
                out.append(_from_stat(relpath, "fifo", st, xattrs))

    walk(Path(root), "")
    return out
