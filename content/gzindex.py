"""A side index for an unmodified tar+gzip layer: file table, gzip checkpoints, span digests.

Built by streaming the layer once (:func:`build_gzip_index`, its bytes hashed against the layer
digest), it lets a lazy layer read any file by inflating from the nearest checkpoint
(``content.gzlayer``). The index is one zstd frame::

    "SNAPFSGZ" | u32 header length | header JSON | u32 TOC length | TOC JSON | windows

- header: ``{"version": 2, "layer": <digest>, "blobSize", "uncompressedSize", "diffID",
  "span", "checkpoints": [[in, bits, out, windowLength], …], "spanDigests": [<digest>, …],
  "marks": [[out, in], …]}``.
  A checkpoint sits at a deflate block boundary: ``in`` compressed bytes consumed (``bits``
  of the last one still unused), ``out`` uncompressed bytes produced; the first sits right
  after the gzip header. One is placed at the first block boundary after every ``span``
  compressed bytes. ``spanDigests[i]`` is the sha256 of the uncompressed bytes from
  checkpoint ``i`` to the next one (or to the end). ``marks`` (version 2) sample the stream
  about every :data:`MARK` compressed bytes: ``in`` compressed bytes gave ``out`` uncompressed
  ones, so a reader needs only the bytes from a part's checkpoint to the first mark past the
  part's end, not its whole span. Version 1 (snapfs before marks, 4 MiB spans) is the same
  without ``marks``: a reader inflates whole spans.
- TOC: the JSON shape of a lazy layer's TOC (``content.toc``): every entry with name, type,
  mode, owner, size, link, xattrs; each regular file's data as ``reg``/``chunk`` parts, one
  per span it crosses, with ``offset`` the part's uncompressed offset in the tar stream and
  ``chunkDigest`` its sha256 — so a wrong file offset fails verification too.
- windows: the 32 KiB of output before each checkpoint (shorter near the start), in order,
  with every byte the span's data never refers back to set to zero (``content.gzindex_sparse``,
  checked by inflating again): the same output, and a window that compresses to little.

Pure apart from the caller's ``read`` (blocking and CPU-bound: run it in a worker thread).
Must not parse an index (``content.gzlayer`` does, treating it as hostile).
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

import zstandard

from content.chunkedtar import toc_entry_of
from content.digest import Digest
from content.errors import DigestMismatch, InvalidArgument
from content.gzindex_sparse import sparse_window
from content.toc import TOCEntry, entry_json, normalize_name
from content.zinflate import GZIP_AUTO, WINDOW, Inflater

MAGIC = b"SNAPFSGZ"
DEFAULT_SPAN = 128 << 10  # the python layer's index: 2.0 % of it, windows sparse (README)
VERSION = 2
MARK = 16 << 10  # compressed bytes between marks: the precision of an early stop
INDEX_MEDIA_TYPE = "application/vnd.snapfs.gzip-index.v1+zstd"
ARTIFACT_TYPE = "application/vnd.snapfs.gzip-index.v1"  # the referrer holding the indexes
ANN_LAYER = "dev.snapfs.gzip-index.layer"  # on each index blob: the layer it indexes
_PIECE = 1 << 20
_OUT = 32 << 10  # inflated per step: a mark's ``out`` overshoots a part's end by at most this

ReadPiece = Callable[[int], bytes]  # (at most n) -> the next compressed bytes, b"" at the end


@dataclass(frozen=True, slots=True)
class IndexStats:
    blob_size: int
    uncompressed_size: int
    checkpoints: int
    files: int
    index_size: int


class _Stream:
    """The uncompressed tar stream of a gzip layer, recording checkpoints as it inflates."""

    def __init__(self, read: ReadPiece, span: int) -> None:
        self._read = read
        self._span = span
        self._z = Inflater(GZIP_AUTO)
        self._in = b""
        self._pos = 0
        self._out = bytearray()  # produced, not yet read by tarfile
        self._window = b""
        self.blob = hashlib.sha256()
        self.blob_size = 0
        self.diff = hashlib.sha256()
        self._span_hash = hashlib.sha256()
        self.checkpoints: list[tuple[int, int, int, bytes]] = []
        self.span_digests: list[str] = []
        self.marks: list[tuple[int, int]] = []
        # Checkpoints whose window is still full: (index, compressed bytes from it, output
        # after it), until 32 KiB is out; then the window is made sparse (gzindex_sparse).
        self._open: list[tuple[int, bytearray, bytearray]] = []
        self._last_byte = 0  # of the previous piece: a checkpoint's partly used byte

    def _step(self) -> None:
        if self._pos == len(self._in):
            self._last_byte = self._in[-1] if self._in else 0
            self._in, self._pos = self._read(_PIECE), 0
            if not self._in:
                raise InvalidArgument(f"gzip stream truncated after {self.blob_size} bytes")
            self.blob.update(self._in)
            self.blob_size += len(self._in)
        z = self._z
        before = self._pos
        out, self._pos = z.inflate(self._in, self._pos, _OUT, block=True)
        for _, data, produced in self._open:
            data += self._in[before:self._pos]
            produced += out[:WINDOW - len(produced)]
        if out:
            if z.total_in - (self.marks[-1][1] if self.marks else 0) >= MARK:
                self.marks.append((z.total_out, z.total_in))
            self.diff.update(out)
            self._span_hash.update(out)
            self._window = (self._window + out)[-WINDOW:]
            self._out += out
        if self._open and (z.finished or len(self._open[0][2]) >= WINDOW):
            self._close_windows()
        if z.finished:
            self._trailing()
        elif z.at_block_boundary and (
                not self.checkpoints if z.total_out == 0
                else z.total_in - self.checkpoints[-1][0] >= self._span):
            if self.checkpoints:
                self.span_digests.append("sha256:" + self._span_hash.hexdigest())
                self._span_hash = hashlib.sha256()
            self.checkpoints.append((z.total_in, z.pending_bits, z.total_out, self._window))
            if self._window:
                last = self._in[self._pos - 1] if self._pos else self._last_byte
                self._open.append((len(self.checkpoints) - 1,
                                   bytearray([last] if z.pending_bits else b""), bytearray()))

    def _close_windows(self) -> None:
        """Make the windows of checkpoints with 32 KiB out after them (or the stream's end)
        sparse: only the bytes their data refers to are kept, the rest zeroed."""
        keep = []
        for i, data, produced in self._open:
            if len(produced) < WINDOW and not self._z.finished:
                keep.append((i, data, produced))
                continue
            at, bits, out, window = self.checkpoints[i]
            self.checkpoints[i] = (at, bits, out, sparse_window(bytes(data), bits, window,
                                                                bytes(produced)))
        self._open = keep

    def _trailing(self) -> None:
        """After the gzip member: only an end of file may follow (a multi-member gzip, as
        eStargz is, has its own lazy format)."""
        while True:
            if self._in[self._pos:].strip(b"\0"):
                raise InvalidArgument("gzip layer has data after its first member; only a "
                                      "single-member gzip can be indexed")
            self._in, self._pos = self._read(_PIECE), 0
            if not self._in:
                break
            self.blob.update(self._in)
            self.blob_size += len(self._in)
        if not self.checkpoints:
            raise InvalidArgument("gzip layer has no deflate data")
        self.span_digests.append("sha256:" + self._span_hash.hexdigest())

    @property
    def total_out(self) -> int:
        return self._z.total_out

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._out) < n) and not self._z.finished:
            self._step()
        n = len(self._out) if n < 0 else min(n, len(self._out))
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def drain(self) -> None:
        while not self._z.finished:
            self._step()
            self._out.clear()

    def close(self) -> None:
        self._z.close()


def _parts(stream: _Stream, tf: tarfile.TarFile, info: tarfile.TarInfo,
           e: TOCEntry) -> list[dict[str, Any]]:
    """A regular file's data as one part per span it crosses, each with its sha256."""
    src = tf.extractfile(info)
    if src is None or info.size == 0:
        return [entry_json(e)]
    out: list[dict[str, Any]] = []
    pos, start, h = info.offset_data, info.offset_data, hashlib.sha256()
    end = info.offset_data + info.size

    def cut(at: int) -> None:
        nonlocal start, h
        first = not out
        part: dict[str, Any] = entry_json(e) if first else {"name": e.name, "type": "chunk"}
        part.update(offset=start, chunkOffset=start - info.offset_data, chunkSize=at - start,
                    chunkDigest="sha256:" + h.hexdigest())
        if first and not part["chunkOffset"]:
            del part["chunkOffset"]
        out.append(part)
        start, h = at, hashlib.sha256()

    while pos < end:
        piece = src.read(min(_PIECE, end - pos))
        if not piece:
            raise InvalidArgument(f"tar entry {info.name!r}: data truncated")
        # Every checkpoint inside this piece is known: the stream has produced past it.
        for _, _, at, _ in stream.checkpoints:
            if pos < at < pos + len(piece):
                h.update(piece[:at - pos])
                piece, pos = piece[at - pos:], at
                cut(at)
        h.update(piece)
        pos += len(piece)
    cut(end)
    return out


def build_gzip_index(read: ReadPiece, digest: Digest, *, span: int = DEFAULT_SPAN,
                     what: str = "layer") -> tuple[bytes, IndexStats]:
    """Index the gzip layer ``read`` yields; verifies it against ``digest`` (and that it is a
    readable tar) before returning the serialised index."""
    if span <= 0:
        raise InvalidArgument(f"{what}: span must be positive, got {span}")
    stream = _Stream(read, span)
    entries: list[dict[str, Any]] = []
    files = 0
    try:
        try:
            with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tf:
                for info in tf:
                    name = normalize_name(info.name, f"{what}: tar entry {info.name!r}")
                    e = toc_entry_of(info, name)
                    if name == "" and e.type != "dir":
                        continue
                    if e.type == "reg":
                        files += 1
                        entries.extend(_parts(stream, tf, info, e))
                    else:
                        entries.append(entry_json(e))
        except tarfile.TarError as exc:
            raise InvalidArgument(f"{what}: not a readable tar ({exc})") from None
        stream.drain()
    except zlib.error as exc:
        raise InvalidArgument(f"{what}: not a valid gzip stream ({exc})") from None
    finally:
        stream.close()
    actual = "sha256:" + stream.blob.hexdigest()
    if actual != str(digest):
        raise DigestMismatch(f"{what}: blob", str(digest), actual)
    header = {
        "version": VERSION, "layer": str(digest), "blobSize": stream.blob_size,
        "uncompressedSize": stream.total_out, "diffID": "sha256:" + stream.diff.hexdigest(),
        "span": span,
        "checkpoints": [[i, b, o, len(w)] for i, b, o, w in stream.checkpoints],
        "spanDigests": stream.span_digests,
        "marks": [[o, i] for o, i in stream.marks if o < stream.total_out]
        + [[stream.total_out, stream.blob_size]],
    }
    data = serialise(header, {"version": 1, "entries": entries},
                     b"".join(w for *_, w in stream.checkpoints))
    return data, IndexStats(stream.blob_size, stream.total_out, len(stream.checkpoints),
                            files, len(data))


def serialise(header: dict[str, Any], toc: dict[str, Any], windows: bytes) -> bytes:
    """The index's bytes from its three sections (the layout in the module docstring)."""
    h = json.dumps(header, separators=(",", ":")).encode()
    t = json.dumps(toc, separators=(",", ":")).encode()
    raw = b"".join([MAGIC, struct.pack(">I", len(h)), h, struct.pack(">I", len(t)), t, windows])
    return zstandard.ZstdCompressor(level=10).compress(raw)


__all__ = ["ANN_LAYER", "ARTIFACT_TYPE", "DEFAULT_SPAN", "INDEX_MEDIA_TYPE", "MAGIC",
           "MARK", "VERSION",
           "IndexStats", "build_gzip_index", "serialise"]
