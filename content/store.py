"""The verified content store: containerd's content-store semantics on local disk.

    <root>/blobs/<alg>/<hex>      verified blobs only (read-only files)
    <root>/ingest/<sha256(ref)>/  partial downloads (see content.ingest); never served

The index (content.index) is a database of the metadata environment handed in as
``metadata``: in a snapfs root, ``<snapfs root>/metadata.lmdb``, shared with the image table,
the snapshots and the lazy layers. A store opened without one is its own root and keeps
``<root>/metadata.lmdb`` (see content.metadata).

A blob enters ``blobs/`` only through :meth:`ContentStore._publish`, which an
:class:`~content.ingest.Ingest` calls after checking size and digest: the verified ingest
file is hard-linked into place (``link`` fails rather than replace, so two writers of one
digest cannot clobber each other), the directory fsynced, then the index row written.
Publishing and deleting share one lock so a delete cannot interleave with a commit of the
same digest inside this process.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import trio

from content.digest import Digest, digest_bytes
from content.errors import DigestMismatch, InvalidArgument, NotFound
from content.filters import parse_filters
from content.index import BlobInfo, ContentIndex
from content.ingest import Ingest, IngestStatus, ingest_dir, read_status, remove_ref
from content.labels import validate_labels
from content.metadata import MetadataDB, Txn

__all__ = ["BlobInfo", "ContentStore", "Ingest", "IngestStatus", "validate_labels"]

log = logging.getLogger(__name__)

OpenStream = Callable[[int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lookup(info: BlobInfo) -> Callable[[Sequence[str]], str | None]:
    def lookup(path: Sequence[str]) -> str | None:
        if len(path) == 1:
            field = path[0]
            if field == "digest":
                return str(info.digest)
            if field == "size":
                return str(info.size)
            if field == "mediatype":
                return info.media_type or None
        if len(path) >= 2 and path[0] == "labels":
            return info.labels.get(".".join(path[1:]))
        return None

    return lookup


class ContentStore:
    """Blobs under ``root``; the index in ``metadata`` (by default its own, at
    ``<root>/metadata.lmdb``, closed with the store; a handle passed in stays open)."""

    def __init__(self, root: Path, *, metadata: MetadataDB | None = None) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._ingest = root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)
        self._index = ContentIndex(metadata) if metadata is not None else ContentIndex.open(root)
        self._publish_lock = threading.Lock()
        self._io_limiter = trio.CapacityLimiter(4)

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> ContentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def _path(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.hex

    def exists(self, digest: Digest) -> bool:
        return self._index.get(digest) is not None and self._path(digest).is_file()

    def info(self, digest: Digest) -> BlobInfo:
        info = self._index.get(digest)
        if info is None:
            raise NotFound(f"content {digest}: not found")
        return info

    def list(self, filters: Sequence[str] = ()) -> list[BlobInfo]:
        selector = parse_filters(filters)
        return [i for i in self._index.all() if selector.match(_lookup(i))]

    def blob_path(self, digest: Digest) -> Path:
        path = self._path(digest)
        if not path.is_file() or self._index.get(digest) is None:
            raise NotFound(f"content {digest}: not found")
        return path

    def read(self, digest: Digest, offset: int = 0, size: int = -1) -> bytes:
        if offset < 0:
            raise InvalidArgument(f"content {digest}: negative offset {offset}")
        try:
            with open(self.blob_path(digest), "rb") as f:
                f.seek(offset)
                return f.read(size)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None

    # -- changing metadata -----------------------------------------------------------------

    def update(
        self, digest: Digest, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()
    ) -> BlobInfo:
        """containerd's Update: no fieldpaths replaces every label; ``labels`` does too;
        ``labels.<key>`` sets (or, with an empty or missing value, deletes) one label."""
        validate_labels(labels)
        now = time.time()

        def change(info: BlobInfo) -> BlobInfo:
            new = dict(info.labels)
            for path in fieldpaths or ("labels",):
                if path == "labels":
                    new = dict(labels)
                elif path.startswith("labels."):
                    key = path[len("labels.") :]
                    new[key] = labels.get(key, "")
                else:
                    raise InvalidArgument(f"content {digest}: cannot update field {path!r}")
            kept = {k: v for k, v in new.items() if v}
            return replace(info, labels=kept, updated_at=now)

        return self._index.update(digest, change)

    def delete(self, digest: Digest) -> None:
        with self._publish_lock:
            had_row = self._index.delete(digest)
            try:
                self._path(digest).unlink()
                had_file = True
            except FileNotFoundError:
                had_file = False
        if not (had_row or had_file):
            raise NotFound(f"content {digest}: not found")
        log.debug("deleted blob %s", digest)

    def delete_where(
        self, select: Callable[[builtins.list[BlobInfo], Txn], Iterable[Digest]]
    ) -> builtins.list[Digest]:
        """Delete the blobs ``select`` picks from every row, choosing and deleting in one
        index transaction (so a concurrent commit is either seen by ``select`` or after);
        ``select`` gets that transaction, to read other stores' records in it."""
        with self._publish_lock:
            deleted = self._index.sweep(select)
            for digest in deleted:
                self._path(digest).unlink(missing_ok=True)
        return deleted

    # -- writing ---------------------------------------------------------------------------

    def _publish(
        self, data: Path, digest: Digest, size: int, media_type: str, labels: Mapping[str, str]
    ) -> BlobInfo:
        validate_labels(labels)
        target = self._path(digest)
        with self._publish_lock:
            os.chmod(data, 0o444)
            target.parent.mkdir(exist_ok=True)
            try:
                os.link(data, target)
                _fsync_dir(target.parent)
            except FileExistsError:
                pass  # another writer published the same verified bytes first
            now = time.time()
            row = BlobInfo(digest, size, media_type, dict(labels), now, now)
            info, inserted = self._index.put_if_absent(row)
        log.debug("commit %s (%d bytes): %s", digest, size, "new" if inserted else "existed")
        return info

    def open_ingest(self, ref: str, expected: Digest, size: int | None = None) -> Ingest:
        """Open (or resume) the one writer of ``ref``; FailedPrecondition if it is busy."""
        if not ref:
            raise InvalidArgument("ingest ref must not be empty")
        return Ingest(ingest_dir(self._ingest, ref), ref, expected, size, self._publish)

    def write_blob(
        self,
        data: bytes,
        media_type: str = "",
        labels: Mapping[str, str] | None = None,
        expected: Digest | None = None,
    ) -> BlobInfo:
        actual = digest_bytes(data, expected.algorithm if expected else "sha256")
        if expected is not None and actual != expected:
            raise DigestMismatch("blob", str(expected), str(actual))
        validate_labels(labels or {})
        if self.exists(actual):
            return self.info(actual)
        # A unique ref: concurrent writers of the same bytes must not lock each other out.
        with self.open_ingest(f"write-blob-{actual}-{uuid.uuid4().hex}", actual, len(data)) as w:
            w.write(data)
            return w.commit(media_type, labels)

    async def write_stream(
        self,
        ref: str,
        expected: Digest,
        size: int | None,
        open_stream: OpenStream,
        media_type: str = "",
        labels: Mapping[str, str] | None = None,
        on_data: Callable[[Path, int], None] | None = None,
    ) -> BlobInfo:
        """Download ``expected`` through ``open_stream(offset)`` into the store.

        Resumes an earlier ingest of ``ref``. If the stream fails or is cancelled, the bytes
        received so far stay in the ingest for the next call; if a stream ends early but made
        progress, it is reopened at the new offset. ``on_data(path, offset)``: called in the
        worker thread once the ingest is open and after each write (a reader may follow the
        file, see content.follow); not called when the blob is already stored.
        """
        validate_labels(labels or {})
        if self.exists(expected):
            return self.info(expected)
        run = trio.to_thread.run_sync
        limiter = self._io_limiter
        ingest = await run(self.open_ingest, ref, expected, size, limiter=limiter)

        def write(chunk: bytes) -> None:
            ingest.write(chunk)
            if on_data is not None:
                # A follower reads the file: what offset counts must be in it, not in our
                # buffer. Unflushed, a small network read (a slow link delivers many) left
                # the follower short of bytes it was told exist, and it waited for the commit:
                # the unpack no longer overlapped the download.
                ingest.flush()
                on_data(ingest.data_path, ingest.offset)

        try:
            if on_data is not None:
                on_data(ingest.data_path, ingest.offset)
            while ingest.current_digest() != expected:
                start = ingest.offset
                if size is not None and start >= size:
                    break
                async with open_stream(start) as chunks:
                    async for chunk in chunks:
                        await run(write, chunk, limiter=limiter)
                if size is None or ingest.offset == start:
                    break  # the stream said it was done; commit reports what is wrong
            return await run(ingest.commit, media_type, labels, limiter=limiter)
        finally:
            ingest.close()

    # -- ingests ---------------------------------------------------------------------------

    def ingests(self) -> builtins.list[IngestStatus]:
        found: builtins.list[IngestStatus] = []
        for entry in self._ingest.iterdir():
            if entry.name.startswith("."):
                continue
            try:
                found.append(read_status(entry))
            except (FileNotFoundError, ValueError, KeyError, TypeError, InvalidArgument):
                continue  # being created or removed right now
        return sorted(found, key=lambda s: s.ref)

    def abort_ingest(self, ref: str) -> None:
        remove_ref(ingest_dir(self._ingest, ref), ref)
