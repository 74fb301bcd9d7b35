"""Partial downloads: one directory per ref under ``<root>/ingest``, resumable, never served.

    <root>/ingest/<sha256(ref)>/
        lock        flock()ed by the one writer of the ref
        ref         the ref, as text (the directory name is only its hash)
        meta.json   {"ref": str, "expected": "<alg>:<hex>", "size": int | null, "started": float}
        data        the bytes received so far, a valid prefix of the expected blob

An :class:`Ingest` hashes while it writes. Reopening a ref re-hashes ``data`` (a hash state
cannot be persisted) and carries on from its end. Verification and publication happen in
:meth:`Ingest.commit`; publishing (link into ``blobs/``, index row) is the store's job,
handed in as a callback so this module knows nothing about LMDB.

Must not publish a blob or touch LMDB: publishing is the store's callback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from content.digest import Digest, Digester, parse_digest
from content.errors import DigestMismatch, FailedPrecondition, InvalidArgument, NotFound
from content.index import BlobInfo

_REHASH_CHUNK = 1 << 20

# (ingest data file, verified digest, size, media type, labels) -> the stored blob's info
Publish = Callable[[Path, Digest, int, str, Mapping[str, str]], BlobInfo]


@dataclass(frozen=True, slots=True)
class IngestStatus:
    ref: str
    offset: int
    expected: Digest
    total: int | None
    started_at: float
    updated_at: float


def ingest_dir(ingest_root: Path, ref: str) -> Path:
    return ingest_root / hashlib.sha256(ref.encode()).hexdigest()


def _lock(directory: Path, ref: str) -> int:
    """Create ``directory`` if needed and flock its lock file; return the locked fd.

    flock (not POSIX lockf) so that two writers in the same process also exclude each other.
    A remover renames the directory away while holding the lock, so after locking we check
    that our lock file is still the one at the path, and start again if it is not.
    """
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        lock_path = directory / "lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # the directory was renamed away between mkdir and open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FailedPrecondition(f"ingest {ref} is locked") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def remove_dir(directory: Path) -> None:
    """Remove an ingest directory; the caller holds its lock (or it is known abandoned)."""
    trash = directory.parent / f".removing-{directory.name}-{uuid.uuid4().hex}"
    try:
        os.rename(directory, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def read_status(directory: Path) -> IngestStatus:
    meta: dict[str, Any] = json.loads((directory / "meta.json").read_bytes())
    data = directory / "data"
    try:
        st = data.stat()
        offset, updated = st.st_size, st.st_mtime
    except FileNotFoundError:
        offset, updated = 0, float(meta["started"])
    size = meta.get("size")
    return IngestStatus(
        ref=str(meta["ref"]),
        offset=offset,
        expected=parse_digest(str(meta["expected"])),
        total=None if size is None else int(size),
        started_at=float(meta["started"]),
        updated_at=updated,
    )


class Ingest:
    """The one writer of one ref. Use :meth:`ContentStore.open_ingest` to get one."""

    def __init__(
        self, directory: Path, ref: str, expected: Digest, size: int | None, publish: Publish
    ) -> None:
        if size is not None and size < 0:
            raise InvalidArgument(f"ingest {ref}: negative size {size}")
        self.ref = ref
        self.expected = expected
        self.size = size
        self._dir = directory
        self._publish = publish
        self._lock_fd: int | None = _lock(directory, ref)
        self._file: BinaryIO | None = None
        self._digester = Digester(expected.algorithm)
        self.committed: BlobInfo | None = None
        try:
            self._resume_or_start()
        except BaseException:
            self.close()
            raise

    def _resume_or_start(self) -> None:
        meta_path, data_path = self._dir / "meta.json", self._dir / "data"
        started = time.time()
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_bytes())
            resumable = meta.get("ref") == self.ref and meta.get("expected") == str(self.expected)
            started = float(meta["started"]) if resumable else started
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            resumable = False
        meta = {"ref": self.ref, "expected": str(self.expected), "size": self.size}
        meta["started"] = started
        (self._dir / "ref").write_text(self.ref)
        _write_atomic(meta_path, json.dumps(meta).encode())
        try:
            if data_path.stat().st_nlink > 1:
                # A commit crashed after linking this file into blobs/: the inode is a
                # (read-only) published blob now, so it must not be appended to. Drop our
                # name for it; the next commit finds the blob and writes its index row.
                data_path.unlink()
                resumable = False
        except FileNotFoundError:
            pass
        self._file = open(data_path, "ab+")  # noqa: SIM115 - owned by this object, see close()
        if resumable:
            self._file.seek(0)
            while chunk := self._file.read(_REHASH_CHUNK):
                self._digester.update(chunk)
        if self.size is not None and self._digester.size > self.size:
            resumable = False  # more data than the blob has: not a prefix of it
        if not resumable and self._digester.size:
            self._file.truncate(0)
            self._digester = Digester(self.expected.algorithm)
        self._file.seek(0, os.SEEK_END)

    @property
    def data_path(self) -> Path:
        """The file the bytes so far are in (a reader may follow it, see content.follow)."""
        return self._dir / "data"

    @property
    def offset(self) -> int:
        """Bytes already in the ingest: resume the download from here."""
        return self._digester.size

    def current_digest(self) -> Digest:
        return self._digester.digest()

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise FailedPrecondition(f"ingest {self.ref} is closed")
        return self._file

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; more bytes than the expected size discard the ingest."""
        f = self._open_file()
        if self.size is not None and self.offset + len(data) > self.size:
            got = self.offset + len(data)
            self.abort()
            raise InvalidArgument(
                f"blob {self.expected} (ingest {self.ref}): too long: expected {self.size} "
                f"bytes, got at least {got}"
            )
        f.write(data)
        self._digester.update(data)

    def flush(self) -> None:
        """Hand what :meth:`write` buffered to the kernel, so that a reader of the data file
        (``content.follow``) sees every byte :attr:`offset` counts."""
        self._open_file().flush()

    def commit(self, media_type: str = "", labels: Mapping[str, str] | None = None) -> BlobInfo:
        """Verify size and digest, then publish the blob; the ingest is gone afterwards.

        A short ingest is kept (it is a valid prefix to resume from); a wrong digest
        discards it. If the blob is already stored, ours is dropped and the stored info
        returned.
        """
        f = self._open_file()
        if self.size is not None and self.offset != self.size:
            raise FailedPrecondition(
                f"blob {self.expected} (ingest {self.ref}): truncated: expected {self.size} "
                f"bytes, got {self.offset}"
            )
        actual = self._digester.digest()
        if actual != self.expected:
            self.abort()
            raise DigestMismatch(f"blob (ingest {self.ref})", str(self.expected), str(actual))
        f.flush()
        os.fsync(f.fileno())
        info = self._publish(self._dir / "data", actual, self.offset, media_type, labels or {})
        self.committed = info
        self.abort()  # the data now lives in blobs/; drop the ingest directory
        return info

    def abort(self) -> None:
        """Discard the ingest's data and release the ref."""
        if self._lock_fd is None:
            return
        remove_dir(self._dir)
        self.close()

    def close(self) -> None:
        """Release the ref but keep the data, so a later writer can resume."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Ingest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.committed is None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # Dropping a writer must not hold the ref forever; the data stays for a resume.
        with contextlib.suppress(Exception):
            self.close()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def remove_ref(directory: Path, ref: str) -> None:
    """Discard an ingest nobody is writing: FailedPrecondition if a writer holds it."""
    if not directory.is_dir():
        raise NotFound(f"ingest {ref}: not found")
    fd = _lock(directory, ref)
    try:
        remove_dir(directory)
    finally:
        os.close(fd)
