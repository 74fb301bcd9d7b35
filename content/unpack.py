"""Apply one layer tar into a snapshot directory, as containerd's overlay applier does.

The layer is streamed (compressed blob → decompressor → sha256 → ``tarfile`` in ``r|``
mode) and never held in memory. OCI whiteouts become overlayfs ones: ``.wh.<name>`` a 0/0
character device ``<name>``, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr
(``user.overlay.opaque`` inside a user namespace). A later entry replaces an earlier one,
except that a directory over a directory merges. Missing parent directories are created
with the attributes of the same directory in the parent layers, as containerd's
``mkparent`` does; a hardlink to a file only present in a parent layer copies it up first.

Security: the tar is hostile input. Every name and hardlink target goes through
``content.safewalk`` (the checks that refuse an escape, and the walk from a directory fd
that never opens anything through a symlink) before anything is written. Must not open
anything below ``dest`` except relative to a directory fd that a ``SafeTree`` walk gave.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from content.compression import open_decompressed
from content.digest import Digest, HashingReader
from content.errors import DigestMismatch, InvalidArgument
from content.expansion import Budget, ExpansionLimit
from content.safewalk import DIR_FLAGS, SafeTree, clean_name
from content.tarlayer import OPAQUE_MARKER, WHITEOUT_PREFIX, XATTR_PAX_PREFIX

log = logging.getLogger(__name__)

_COPY = 1 << 20


@dataclass(frozen=True, slots=True)
class ApplyResult:
    diff_id: Digest  # sha256 of the uncompressed tar stream
    size: int  # bytes of the uncompressed tar stream


class _MkParent:
    """Creates a missing parent directory like the same one in the parent layers."""

    def __init__(self, parents: Sequence[SafeTree],
                 dirs: list[tuple[tuple[str, ...], int]]) -> None:
        self._parents = parents
        self._dirs = dirs

    def __call__(self, dir_fd: int, real: tuple[str, ...]) -> None:
        name = real[-1]
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        for parent in self._parents:
            try:
                with parent.open_dir(real[:-1], "parent layer") as pfd:
                    st = os.stat(name, dir_fd=pfd[0], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError, InvalidArgument):
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # replaced in that layer: nothing to copy
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
            self._dirs.append((real, st.st_mtime_ns))
            return


def _remove(dir_fd: int, name: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


class _Applier:
    def __init__(self, dest: Path, parents: Sequence[Path], userns: bool,
                 skip: Collection[str] = (), budget: Budget | None = None) -> None:
        self.userns = userns
        self.budget = budget or Budget(None)
        self.dest_path = dest
        # Entries whose owner this user namespace does not map (root-only rootless): they stay
        # owned by root, said in one line per layer by finish(), not one per entry.
        self.unmapped: list[tuple[str, int, int]] = []
        self.skip = frozenset(skip)
        self.dest = SafeTree(dest)
        self.parents: list[SafeTree] = []
        try:
            for p in parents:
                self.parents.append(SafeTree(p))
        except BaseException:
            self.close()
            raise
        self.dirs: list[tuple[tuple[str, ...], int]] = []
        self.mkparent = _MkParent(self.parents, self.dirs)
        self._cached: tuple[tuple[str, ...], int, tuple[str, ...]] | None = None
        self._stale = False

    def close(self) -> None:
        self._drop_cached()
        for t in (self.dest, *self.parents):
            t.close()

    def _parent_dir(self, parts: tuple[str, ...], what: str) -> tuple[int, tuple[str, ...]]:
        """The directory an entry goes in, walked safely once for a run of entries in it.

        A layer's entries come grouped by directory, and the walk from the root (one open
        per component) was the largest cost of applying a layer. The cached fd stays right
        while nothing is removed: a directory changes identity only by being removed (or
        replaced, which removes it first), and every removal goes through ``_remove``,
        which marks the cache stale (closed at the next entry: the current one may still
        be using its fd)."""
        if self._cached is not None and self._cached[0] == parts and not self._stale:
            return self._cached[1], self._cached[2]
        self._drop_cached()
        fd, real = self.dest.dir_fd(parts, what, self.mkparent)
        self._cached = (parts, fd, real)
        return fd, real

    def _drop_cached(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None
        self._stale = False

    def _remove(self, dir_fd: int, name: str, st: os.stat_result) -> None:
        self._stale = True
        _remove(dir_fd, name, st)

    def apply(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        what = f"layer entry {member.name!r}"
        parts = clean_name(member.name, what)
        if not parts:
            return  # the root itself: containerd leaves the snapshot dir alone
        if "/".join(parts) in self.skip:
            return  # format metadata the caller hides (eStargz's TOC and landmarks)
        base = parts[-1]
        dfd, real = self._parent_dir(parts[:-1], what)
        if base == OPAQUE_MARKER:
            name = "user.overlay.opaque" if self.userns else "trusted.overlay.opaque"
            os.setxattr(dfd, name, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata (.wh..wh.plnk …): no meaning for overlay
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(dfd, base[len(WHITEOUT_PREFIX):], member, what)
            return
        self._create(tf, member, dfd, base, real, what)

    def _whiteout(self, dfd: int, name: str, member: tarfile.TarInfo, what: str) -> None:
        if name in ("", ".", ".."):
            raise InvalidArgument(f"{what}: whiteout of {name!r}")
        with contextlib.suppress(FileNotFoundError):
            self._remove(dfd, name, os.stat(name, dir_fd=dfd, follow_symlinks=False))
        os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=dfd)
        self._chown(dfd, name, member)

    def _chown(self, dfd: int, name: str, member: tarfile.TarInfo) -> None:
        try:
            os.chown(name, member.uid, member.gid, dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            if not self.userns:
                raise
            self._unmapped(name, member, exc)

    def _unmapped(self, name: str, member: tarfile.TarInfo, exc: OSError) -> None:
        if exc.errno == errno.EINVAL:  # the id has no mapping here: summed up in finish()
            self.unmapped.append((member.name or name, member.uid, member.gid))
        else:
            log.warning("chown %s to %d:%d: %s", name, member.uid, member.gid, exc)

    def _create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, dfd: int, base: str,
                real: tuple[str, ...], what: str) -> None:
        try:
            existing: os.stat_result | None = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (stat.S_ISDIR(existing.st_mode) and m.isdir()):
            self._remove(dfd, base, existing)
            existing = None
        mode = stat.S_IMODE(m.mode)
        mtime_ns = round(m.mtime * 1e9)
        if m.isreg():
            self.budget.charge_file(m.size)  # a sparse file's size, not its bytes in the tar
            self._write_file(tf, m, dfd, base, mode, mtime_ns)
            return
        if m.isdir():
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=dfd)
            fd = os.open(base, DIR_FLAGS, dir_fd=dfd)
            try:
                self._fd_attrs(fd, m, mode)
            finally:
                os.close(fd)
            self.dirs.append(((*real, base), mtime_ns))
            return
        if m.issym():
            os.symlink(m.linkname, base, dir_fd=dfd)
            self._chown(dfd, base, m)
            os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)
            return
        if m.islnk():
            self._hardlink(m, dfd, base, what)
            return
        if m.ischr() or m.isblk() or m.isfifo():
            if self.userns and not m.isfifo():
                log.warning("%s: device nodes cannot be created in a user namespace; skipped",
                            what)
                return
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
            self._chown(dfd, base, m)
            # A node we just made is not a symlink; chmod after chown keeps setuid bits.
            os.chmod(base, mode, dir_fd=dfd)
            self._xattrs_path(dfd, base, m)
            os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)
            return
        raise InvalidArgument(f"{what}: unsupported tar entry type {m.type!r}")

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, dfd: int, base: str,
                    mode: int, mtime_ns: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=dfd)
        try:
            src = tf.extractfile(m)
            if src is not None:
                while chunk := src.read(_COPY):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            self._fd_attrs(fd, m, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def _fd_attrs(self, fd: int, m: tarfile.TarInfo, mode: int) -> None:
        try:
            os.fchown(fd, m.uid, m.gid)
        except OSError as exc:
            if not self.userns:
                raise
            self._unmapped(m.name, m, exc)
        os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
        for name, value in _pax_xattrs(m):
            self._setxattr(fd, name, value, m)

    def _xattrs_path(self, dfd: int, base: str, m: tarfile.TarInfo) -> None:
        for name, value in _pax_xattrs(m):
            # No fd for a device node without opening it: go through the dir fd's proc path.
            self._setxattr(f"/proc/self/fd/{dfd}/{base}", name, value, m)

    def _setxattr(self, target: int | str, name: str, value: bytes, m: tarfile.TarInfo) -> None:
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if self.userns and name.startswith(("security.", "trusted.")):
                log.warning("%s: xattr %s not settable in a user namespace: %s",
                            m.name, name, exc)
                return
            raise

    def _hardlink(self, m: tarfile.TarInfo, dfd: int, base: str, what: str) -> None:
        target = clean_name(m.linkname, f"{what}: hardlink target")
        if not target:
            raise InvalidArgument(f"{what}: hardlink to the layer root")
        with self.dest.open_dir(target[:-1], what, self.mkparent) as (tfd, _):
            try:
                os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                self._copy_up(target, tfd, what)
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)

    def _copy_up(self, target: tuple[str, ...], tfd: int, what: str) -> None:
        name = target[-1]
        for parent in self.parents:
            try:
                with parent.open_dir(target[:-1], what) as (pfd, _):
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        break
                    _copy_file(pfd, tfd, name, st)
                    return
            except (FileNotFoundError, NotADirectoryError):
                continue
        raise InvalidArgument(f"{what}: hardlink target {'/'.join(target)!r} not found")

    def finish(self) -> None:
        if self.unmapped:
            path, uid, gid = self.unmapped[0]
            log.warning("layer for %s: %d entries owned by ids this user namespace does not map "
                        "(first: %s, %d:%d) are owned by root instead; subordinate ids in "
                        "/etc/subuid and /etc/subgid keep their owners", self.dest_path,
                        len(self.unmapped), path, uid, gid)
        # Directory mtimes last: creating entries inside a directory changes its mtime.
        for real, mtime_ns in reversed(self.dirs):
            try:
                with self.dest.open_dir(real, "directory times", follow=False) as (fd, _):
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced by a later entry


def _copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dst_dir)
        try:
            while chunk := os.read(src, _COPY):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            for xname in os.listxattr(src):
                with contextlib.suppress(OSError):
                    os.setxattr(dst, xname, os.getxattr(src, xname))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _pax_xattrs(m: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in m.pax_headers.items():
        if key.startswith(XATTR_PAX_PREFIX):
            # tarfile decodes non-UTF-8 values with surrogateescape: undo it for the bytes.
            yield key[len(XATTR_PAX_PREFIX):], value.encode("utf-8", "surrogateescape")


def apply_layer(
    blob: Path | BinaryIO,
    dest: Path,
    *,
    parents: Sequence[Path] = (),
    userns: bool = False,
    expected_diff_id: Digest | None = None,
    skip: Collection[str] = (),
    limit: ExpansionLimit | None = None,
) -> ApplyResult:
    """Extract the layer ``blob`` (gzip, zstd or plain tar; detected) into ``dest``.

    ``dest`` is created if missing. ``parents`` are the lower layers' directories, topmost
    first. Blocking: run it in a
    worker thread. On DigestMismatch or InvalidArgument ``dest`` is partly written and the
    caller discards it; so on LayerTooLarge, when the layer expands past ``limit``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    # ``skip``: top-level entry names to leave out (hashed for the diffID all the same).
    with contextlib.ExitStack() as stack:
        src: BinaryIO = stack.enter_context(open(blob, "rb")) if isinstance(blob, Path) else blob
        _, raw = open_decompressed(src)
        budget = Budget(limit)
        reader = HashingReader(budget.reader(raw))
        applier = _Applier(dest, parents, userns, skip, budget)
        stack.callback(applier.close)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:  # type: ignore[call-overload]
                while (member := tf.next()) is not None:
                    applier.apply(tf, member)
                    tf.members.clear()  # stream mode keeps every header otherwise
                end = tf.offset
        except tarfile.TarError as exc:
            raise InvalidArgument(f"layer for {dest}: malformed tar: {exc}") from exc
        applier.finish()
        reader.drain()
        if reader.digester.size < end + tarfile.BLOCKSIZE:
            # tarfile ends quietly at a cut-off header; a whole tar has zero blocks there
            # (two by the standard; one is accepted from sloppy writers).
            raise InvalidArgument(
                f"layer for {dest}: tar stream truncated at {end} (no end-of-archive marker)"
            )
    diff_id = reader.digester.digest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DigestMismatch(f"layer applied to {dest}", str(expected_diff_id), str(diff_id))
    return ApplyResult(diff_id, reader.digester.size)
