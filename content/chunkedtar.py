"""The chunked-tar writer shared by eStargz and zstd:chunked.

Both formats are an ordinary compressed tar cut into independently compressed units: each
regular file's payload (or each ``chunk_size`` piece of a large file) starts a new unit, so a
reader can fetch and decompress one file with one Range request. They differ only in the
compressor and in what follows the last entry (eStargz: a TOC tar entry and a gzip footer;
zstd:chunked: skippable frames), which stay in ``content.estargz`` / ``content.zstdchunked``.

Entries may be reordered for prefetch: prioritized files (with their parent directories and
hardlink targets) first, then a ``.prefetch.landmark``; the rest in their original order.

Must not know either format's compressor or trailer: those are the format modules'.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO, cast

from content.digest import Digest, Digester, digest_bytes
from content.errors import InvalidArgument
from content.toc import TOCEntry, entry_json, normalize_name

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"
DEFAULT_CHUNK_SIZE = 4 << 20
# A TOC is metadata; anything beyond this is a decompression bomb, not a layer index.
MAX_TOC_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A lazy layer we wrote. ``blob`` is None when it went to the caller's ``out`` file."""

    blob: bytes | None
    blob_digest: Digest
    blob_size: int
    toc_digest: Digest
    diff_id: Digest  # sha256 of the uncompressed tar stream: the layer's diff ID
    uncompressed_size: int
    annotations: dict[str, str] = field(default_factory=dict)


class ChunkedSink:
    """Collects the uncompressed tar stream and cuts it into independently compressed units."""

    def __init__(self, out: BinaryIO | None, compress: Callable[[bytes], bytes]) -> None:
        self._out = out
        self._compress = compress
        self._blob = bytearray()
        self._unit = bytearray()
        self.pos = 0
        self.blob_digest = Digester()
        self.diff = Digester()

    def write(self, data: bytes) -> None:
        self._unit += data
        self.diff.update(data)

    def cut(self) -> int:
        """End the current unit (if any); return the offset where the next one starts."""
        if self._unit:
            self.raw(self._compress(bytes(self._unit)))
            self._unit.clear()
        return self.pos

    def raw(self, data: bytes) -> None:
        """Append bytes to the blob outside the tar stream (footers, skippable frames)."""
        if self._out is not None:
            self._out.write(data)
        else:
            self._blob += data
        self.blob_digest.update(data)
        self.pos += len(data)

    def result(self, toc_digest: Digest, annotations: dict[str, str]) -> BuildResult:
        return BuildResult(
            blob=None if self._out is not None else bytes(self._blob),
            blob_digest=self.blob_digest.digest(), blob_size=self.pos, toc_digest=toc_digest,
            diff_id=self.diff.digest(), uncompressed_size=self.diff.size,
            annotations=annotations)


def _rfc3339(mtime: float) -> str:
    t = datetime.fromtimestamp(int(mtime), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    ns = round((mtime - int(mtime)) * 1e9)
    return f"{t}.{ns:09d}".rstrip("0") + "Z" if ns else t + "Z"


_TYPES = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
          tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}


def _toc_entry(info: tarfile.TarInfo, name: str) -> TOCEntry:
    etype = "reg" if info.isreg() else _TYPES.get(info.type)
    if etype is None:
        raise InvalidArgument(f"tar entry {info.name!r}: unsupported type {info.type!r}")
    xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
              for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    link = normalize_name(info.linkname, f"tar entry {info.name!r}") if etype == "hardlink" \
        else info.linkname
    return TOCEntry(
        name=name, type=etype, size=info.size if etype == "reg" else 0,
        modtime=_rfc3339(info.mtime), linkname=link, mode=info.mode, uid=info.uid,
        gid=info.gid, uname=info.uname, gname=info.gname,
        devmajor=info.devmajor if etype in ("char", "block") else 0,
        devminor=info.devminor if etype in ("char", "block") else 0, xattrs=xattrs)


toc_entry_of = _toc_entry  # a tar member as a TOC entry (content.gzindex's file table)


def _landmark(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = len(LANDMARK_CONTENTS), 0o644, tarfile.REGTYPE
    return info, LANDMARK_CONTENTS


Planned = tuple[tarfile.TarInfo, bytes | None]  # an entry, and its payload if we made it up


def order_entries(members: list[tarfile.TarInfo], prioritized: Sequence[str], *,
                  no_prefetch_landmark: bool = True) -> list[Planned]:
    """Prioritized files (with their parent dirs and hardlink targets) first, then a landmark.

    Without prioritized files the ``.no.prefetch.landmark`` goes first, as stargz does.
    """
    if not prioritized:
        head = [_landmark(NO_PREFETCH_LANDMARK)] if no_prefetch_landmark else []
        return [*head, *((m, None) for m in members)]
    by_name = {normalize_name(m.name, f"tar entry {m.name!r}"): m for m in members}
    picked: dict[int, tarfile.TarInfo] = {}

    def pick(name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            m = by_name.get("/".join(parts[:i]))
            if m is not None and id(m) not in picked:
                if m.islnk():
                    pick(normalize_name(m.linkname, f"tar entry {m.name!r}"))
                picked[id(m)] = m

    for p in prioritized:
        name = normalize_name(p, f"prioritized file {p!r}")
        if name not in by_name:
            raise InvalidArgument(f"prioritized file {p!r} is not in the layer")
        pick(name)
    rest = [(m, None) for m in members if id(m) not in picked]
    return [*((m, None) for m in picked.values()), _landmark(PREFETCH_LANDMARK), *rest]


@contextlib.contextmanager
def _open_tar(tar_stream: BinaryIO) -> Iterator[tuple[tarfile.TarFile, list[tarfile.TarInfo]]]:
    with contextlib.ExitStack() as stack:
        try:
            seekable = tar_stream.seekable()
        except (AttributeError, OSError):
            seekable = False
        if not seekable:
            # Reordering for prefetch needs random access; spool a pipe to memory/disk first.
            spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=64 << 20))
            while block := tar_stream.read(1 << 20):
                spool.write(block)
            spool.seek(0)
            tar_stream = cast(BinaryIO, spool)
        try:
            tf = stack.enter_context(tarfile.open(fileobj=tar_stream, mode="r:"))
            members = tf.getmembers()
        except tarfile.TarError as e:
            raise InvalidArgument(f"input layer is not a readable tar ({e})") from None
        yield tf, members


def write_chunked_entries(tar_stream: BinaryIO, sink: ChunkedSink, *, chunk_size: int,
                          prioritized: Sequence[str], record_end: bool,
                          no_prefetch_landmark: bool = True) -> list[dict[str, Any]]:
    """Write every tar entry through ``sink``, each payload chunk in its own unit.

    ``record_end`` (zstd:chunked) closes the unit right after each chunk and records the
    file's ``endOffset``; eStargz lets padding and the next headers share the last chunk's
    member. Returns the TOC entries as JSON objects. The tar EOF marker is left to the caller.
    """
    if chunk_size <= 0:
        raise InvalidArgument(f"chunk size must be positive, got {chunk_size}")
    out: list[dict[str, Any]] = []
    with _open_tar(tar_stream) as (tf, members):
        for info, payload in order_entries(
                members, prioritized, no_prefetch_landmark=no_prefetch_landmark):
            name = normalize_name(info.name, f"tar entry {info.name!r}")
            if name == TOC_TAR_NAME:
                raise InvalidArgument(f"tar entry {info.name!r} collides with the eStargz TOC")
            entry = _toc_entry(info, name)
            sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            if entry.type != "reg" or entry.size == 0:
                out.append(entry_json(entry))
                continue
            src = io.BytesIO(payload) if payload is not None else tf.extractfile(info)
            assert src is not None
            out.extend(_write_payload(src, entry, sink, chunk_size, record_end))
            sink.write(b"\0" * (-entry.size % tarfile.BLOCKSIZE))
    return out


def _write_payload(src: IO[bytes], entry: TOCEntry, sink: ChunkedSink, chunk_size: int,
                   record_end: bool) -> list[dict[str, Any]]:
    file_digest = Digester()
    pieces: list[TOCEntry] = []
    end = 0
    for start in range(0, entry.size, chunk_size):
        n = min(chunk_size, entry.size - start)
        data = src.read(n)
        if len(data) != n:
            raise InvalidArgument(f"tar entry {entry.name!r} is truncated")
        offset = sink.cut()
        sink.write(data)
        if record_end:
            end = sink.cut()
        file_digest.update(data)
        pieces.append(TOCEntry(name=entry.name, type="chunk", offset=offset, chunk_offset=start,
                               chunk_size=n, chunk_digest=digest_bytes(data)))
    chunked = len(pieces) > 1
    first = pieces[0]
    pieces[0] = replace(entry, digest=file_digest.digest(), offset=first.offset, end_offset=end,
                        chunk_size=first.chunk_size if chunked else 0,
                        chunk_digest=first.chunk_digest)
    # eStargz: the last chunk says chunkSize 0 ("to the end"); zstd:chunked gives every size.
    return [entry_json(p, last_chunk=chunked and not record_end and i == len(pieces) - 1)
            for i, p in enumerate(pieces)]
