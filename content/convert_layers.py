"""Converting one layer: download, decompress, rewrite in the chunked format, push.

    layer blob ─▶ download (spooled to disk, verified) ─▶ :func:`stage_layer`: decompress to
    a tar (worker thread) ─▶ [the image-level plan assigns prioritized files] ─▶
    :func:`finish_layer`: rewrite with the chunked-tar writer, push the blob

A layer already in the target format (recognised by its footer) is copied as is, by a
cross-repository mount when both references share a registry, unless files are
prioritized. Each file on disk goes as soon as it is used. Must not read or push
manifests, configs or indexes: the image around the layers is ``content.convert``'s.
"""

from __future__ import annotations

import logging
import mmap
import os
import tarfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, cast

import trio

from content import mediatypes as mt
from content.chunkedtar import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME, BuildResult
from content.compression import open_decompressed
from content.descriptor import Descriptor
from content.digest import Digest, Digester, HashingReader
from content.errors import DigestMismatch, InvalidArgument
from content.estargz import build_estargz
from content.lazyformat import FOOTER_PROBE, load_lazy_layer, parse_footer
from content.reference import Reference
from content.registry import Registry
from content.toc import normalize_name
from content.zstdchunked import build_zstd_chunked


class ImageSource(Protocol):
    """Where a conversion reads from: a registry (``content.registry.Registry``) or an OCI
    image layout (``content.ocilayout.OciLayout``)."""

    async def fetch_manifest(self, ref: Reference, obj: str) -> tuple[Descriptor, bytes]: ...
    async def fetch_blob(self, ref: Reference, desc: Descriptor) -> bytes: ...
    def stream_blob(self, ref: Reference, digest: Digest, offset: int = 0,
                    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class ConvertProgress(Protocol):
    """Told about each image and each layer's steps (``snapfs.app.progress.PullProgress``
    shows them): ``downloaded`` (``done`` = its bytes), then ``converted`` or ``copied``."""

    def image(self, name: str, layers: Sequence[Descriptor]) -> None: ...
    def layer(self, desc: Descriptor, state: str, done: int = 0) -> None: ...


class NoProgress:
    def image(self, name: str, layers: Sequence[Descriptor]) -> None:
        pass

    def layer(self, desc: Descriptor, state: str, done: int = 0) -> None:
        pass

log = logging.getLogger(__name__)

Format = Literal["estargz", "zstd:chunked"]
FORMATS: tuple[Format, ...] = ("estargz", "zstd:chunked")
_MEDIA_TYPE: Mapping[str, str] = {"estargz": mt.OCI_LAYER_GZIP, "zstd:chunked": mt.OCI_LAYER_ZSTD}
_LAZY_ANNOTATIONS = frozenset({
    mt.ANN_STARGZ_TOC_DIGEST, mt.ANN_UNCOMPRESSED_SIZE, mt.ANN_ZSTD_MANIFEST_CHECKSUM,
    mt.ANN_ZSTD_MANIFEST_POSITION, mt.ANN_ZSTD_MANIFEST_CHECKSUM_OLD,
    mt.ANN_ZSTD_MANIFEST_POSITION_OLD})
_FORMAT_ENTRIES = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
# Uploads go in PATCH pieces of this size, read from a read-only map of the new blob.
PUSH_CHUNK = 16 << 20
_COPY = 1 << 20
# Decompression and compression are whole-layer CPU work: at most two at once.
_CPU = trio.CapacityLimiter(2)


@dataclass(frozen=True, slots=True)
class Options:
    format: Format
    prioritize: tuple[str, ...]
    chunk_size: int


@dataclass(frozen=True, slots=True)
class Staged:
    """A downloaded layer: its blob, and either its tar (to rewrite) or its lazy annotations
    (to copy as is)."""

    blob: Path
    tar: Path | None
    names: Mapping[str, str]  # entry name → symlink target, when files are prioritized
    keep: dict[str, str] | None  # annotations of a layer already in the target format


def _decompress(blob: Path, tar: Path | None, strip: bool, what: str) -> tuple[Digest, int]:
    """The diff ID and size of ``blob``'s uncompressed tar, copied to ``tar`` when given.

    ``strip`` drops the metadata entries of a lazy layer in another format (the eStargz TOC
    and the landmarks): the new writer adds its own, and refuses a stray TOC entry.
    """
    with open(blob, "rb") as src, open(tar or os.devnull, "wb") as out:
        _, raw = open_decompressed(src)
        reader = HashingReader(raw)
        if strip:
            try:
                with tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|") as tin, \
                        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
                    for m in tin:
                        if normalize_name(m.name, what) not in _FORMAT_ENTRIES:
                            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
            except tarfile.TarError as e:
                raise InvalidArgument(f"{what}: not a readable tar ({e})") from None
        while block := reader.read(_COPY):
            out.write(block)
    if reader.digester.size == 0:
        raise InvalidArgument(f"{what}: empty layer")
    return reader.digester.digest(), reader.digester.size


def _tar_names(tar: Path, what: str) -> dict[str, str]:
    """Entry names, each with its symlink target ("" for other types)."""
    try:
        with tarfile.open(tar, mode="r:") as tf:
            return {normalize_name(m.name, what): m.linkname if m.issym() else ""
                    for m in tf.getmembers()}
    except tarfile.TarError as e:
        raise InvalidArgument(f"{what}: not a readable tar ({e})") from None


def _build(tar: Path, out: Path, opts: Options, prioritized: Sequence[str]) -> BuildResult:
    builder = build_estargz if opts.format == "estargz" else build_zstd_chunked
    with open(tar, "rb") as src, open(out, "wb") as dst:
        return builder(src, out=dst, chunk_size=opts.chunk_size, prioritized=prioritized)


def _footer(blob: Path, size: int, what: str) -> str | None:
    with open(blob, "rb") as f:
        f.seek(max(0, size - FOOTER_PROBE))
        tail = f.read()
    try:
        loc = parse_footer(tail, size, what)
    except InvalidArgument:
        return None  # a footer pointing nowhere: rewrite the layer
    return loc.format if loc is not None else None


def _unlink(path: Path) -> None:
    # Each file goes as soon as it is used: every layer's tar waits on disk for the plan.
    path.unlink(missing_ok=True)


async def _download(registry: ImageSource, ref: Reference, desc: Descriptor, path: Path,
                    what: str) -> None:
    digester = Digester()
    async with await trio.open_file(path, "wb") as f, \
            registry.stream_blob(ref, desc.digest) as chunks:
        async for chunk in chunks:
            digester.update(chunk)
            await f.write(chunk)
    if digester.size != desc.size:
        raise InvalidArgument(f"{what}: got {digester.size} bytes, the manifest says {desc.size}")
    if digester.digest() != desc.digest:
        raise DigestMismatch(what, str(desc.digest), str(digester.digest()))


async def _lazy_annotations(blob: Path, size: int, fmt: str, uncompressed: int,
                            what: str) -> dict[str, str]:
    async def read_range(offset: int, length: int) -> bytes:
        def read() -> bytes:
            with open(blob, "rb") as f:
                f.seek(offset)
                return f.read(length)
        return await trio.to_thread.run_sync(read)

    layer = await load_lazy_layer(read_range, size, what=what)
    assert layer is not None  # the footer was recognised before
    if fmt == "estargz":
        return {mt.ANN_STARGZ_TOC_DIGEST: str(layer.toc_digest),
                mt.ANN_UNCOMPRESSED_SIZE: str(uncompressed)}
    loc = layer.location
    return {mt.ANN_ZSTD_MANIFEST_CHECKSUM: str(layer.toc_digest),
            mt.ANN_ZSTD_MANIFEST_POSITION:
                f"{loc.toc_offset}:{loc.toc_length}:{loc.toc_uncompressed_length}:1",
            mt.ANN_UNCOMPRESSED_SIZE: str(uncompressed)}


async def stage_layer(registry: ImageSource, src: Reference, desc: Descriptor, diff_id: Digest,
                 opts: Options, work: Path, what: str) -> Staged:
    blob, tar = work / "blob", work / "tar"
    await _download(registry, src, desc, blob, what)
    fmt = await trio.to_thread.run_sync(_footer, blob, desc.size, what)
    keep = fmt == opts.format and not opts.prioritize
    got, size = await trio.to_thread.run_sync(
        _decompress, blob, None if keep else tar, fmt is not None and not keep, what,
        limiter=_CPU)
    if got != diff_id:
        raise DigestMismatch(f"{what}: uncompressed", str(diff_id), str(got))
    if keep:
        annotations = await _lazy_annotations(blob, desc.size, opts.format, size, what)
        return Staged(blob, None, {}, annotations)
    await trio.to_thread.run_sync(_unlink, blob)
    names = await trio.to_thread.run_sync(_tar_names, tar, what) if opts.prioritize else {}
    return Staged(blob, tar, names, None)


async def _push_file(registry: Registry, dst: Reference, path: Path, digest: Digest,
                     mount_from: str | None) -> None:
    def open_map() -> mmap.mmap:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    mapped = await trio.to_thread.run_sync(open_map)
    try:
        # Registry.push_blob takes bytes; a read-only map slices to bytes piece by piece, so
        # the blob is never copied into memory whole.
        await registry.push_blob(dst, cast(bytes, mapped), digest, chunk_size=PUSH_CHUNK,
                                 mount_from=mount_from)
    finally:
        mapped.close()


async def finish_layer(registry: Registry, src: Reference, dst: Reference, desc: Descriptor,
                  staged: Staged, prioritized: Sequence[str], opts: Options, work: Path,
                  what: str, *, can_mount: bool = True) -> tuple[Descriptor, Digest | None]:
    """Push the layer (copied or rewritten); its descriptor, and its new diff ID if any.
    ``can_mount``: the source is the registry pushed to (a copy may be a cross-repository
    mount when the domains match)."""
    kept = {k: v for k, v in desc.annotations.items() if k not in _LAZY_ANNOTATIONS}
    media_type = _MEDIA_TYPE[opts.format]
    if staged.keep is not None:
        mount = src.path if can_mount and src.domain == dst.domain else None
        await _push_file(registry, dst, staged.blob, desc.digest, mount)
        await trio.to_thread.run_sync(_unlink, staged.blob)
        log.info("%s: already %s, copied", what, opts.format)
        return Descriptor(media_type, desc.digest, desc.size, {**kept, **staged.keep}), None
    assert staged.tar is not None
    out = work / "out"
    result = await trio.to_thread.run_sync(_build, staged.tar, out, opts, prioritized,
                                           limiter=_CPU)
    await trio.to_thread.run_sync(_unlink, staged.tar)
    await _push_file(registry, dst, out, result.blob_digest, None)
    await trio.to_thread.run_sync(_unlink, out)
    annotations = {**kept, **result.annotations,
                   mt.ANN_UNCOMPRESSED_SIZE: str(result.uncompressed_size)}
    log.info("%s: converted to %s %s (%d bytes)", what, opts.format, result.blob_digest.short(),
             result.blob_size)
    return Descriptor(media_type, result.blob_digest, result.blob_size, annotations), \
        result.diff_id


__all__ = ["FORMATS", "PUSH_CHUNK", "ConvertProgress", "Format", "ImageSource", "NoProgress",
           "Options", "Staged", "finish_layer", "stage_layer"]
