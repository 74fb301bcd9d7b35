"""Convert a registry image into a lazily pullable one (eStargz or zstd:chunked).

    src manifest ─▶ each layer: download (spooled to disk, verified) ─▶ decompress to a tar
                 ─▶ rewrite with the chunked-tar writer (worker thread) ─▶ push the blob
                 ─▶ old config with the new ``rootfs.diff_ids`` ─▶ OCI manifest pushed at dst
    src index (``all_platforms``) ─▶ every image manifest, pushed by digest ─▶ index at dst

Layers live on disk (blob, tar, new blob), never whole in memory. A layer already in the
target format (recognised by its footer) is copied as is, by a cross-repository mount when
both references share a registry, unless files are prioritized: reordering needs a rewrite.
Prioritized files go to the topmost layer that holds them; converted layers are still plain
tar+gzip / tar+zstd, with the landmark files (``.prefetch.landmark``, eStargz's
``.no.prefetch.landmark``) and eStargz's ``stargz.index.json`` as ordinary files in a native
extraction, exactly as stargz-snapshotter's own layers show them.

Past 300 lines: the prioritize plan (pure, top), the per-layer staging on disk (middle) and the
image/index assembly (bottom) share the private ``_Staged`` hand-off; the staging half could
move to its own module (``convert_layers``) when it grows.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import trio

from content import mediatypes as mt
from content.chunkedtar import (
    DEFAULT_CHUNK_SIZE,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_TAR_NAME,
    BuildResult,
)
from content.compression import open_decompressed
from content.descriptor import Descriptor, Platform, host_platform
from content.digest import Digest, Digester, HashingReader, digest_bytes
from content.errors import DigestMismatch, InvalidArgument
from content.estargz import build_estargz
from content.image import parse_config, parse_index, parse_manifest
from content.lazyformat import FOOTER_PROBE, load_lazy_layer, parse_footer
from content.reference import Reference
from content.registry import Registry
from content.registry_manifests import manifest_what, parse_manifest_json, select_platform
from content.toc import normalize_name
from content.zstdchunked import build_zstd_chunked

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
_MAX_SYMLINKS = 40  # as Linux's path walk
# Decompression and compression are whole-layer CPU work: at most two at once.
_CPU = trio.CapacityLimiter(2)


@dataclass(frozen=True, slots=True)
class Options:
    format: Format
    prioritize: tuple[str, ...]
    chunk_size: int


@dataclass(frozen=True, slots=True)
class _Staged:
    """A downloaded layer: its blob, and either its tar (to rewrite) or its lazy annotations
    (to copy as is)."""

    blob: Path
    tar: Path | None
    names: Mapping[str, str]  # entry name → symlink target, when files are prioritized
    keep: dict[str, str] | None  # annotations of a layer already in the target format


def assign_prioritized(layers: Sequence[Mapping[str, str]], paths: Sequence[str],
                       ) -> tuple[list[list[str]], list[str]]:
    """Each path goes to the topmost layer (last in ``layers``) that holds it.

    ``layers`` map each entry name to its symlink target ("" for anything else). Symlinks
    on the way are followed through the merged view (``bin/sh`` in a merged-/usr image is
    ``usr/bin/sh``); a symlink named last is kept with its target. Returns the per-layer
    lists, in the given order, and the paths no layer holds."""
    per_layer: list[list[str]] = [[] for _ in layers]
    missed: list[str] = []
    for path in paths:
        found = _resolve(layers, normalize_name(path, f"prioritized file {path!r}"), 0)
        if not found:
            missed.append(path)
        for i, name in found:
            if name not in per_layer[i]:
                per_layer[i].append(name)
    return per_layer, missed


def _resolve(layers: Sequence[Mapping[str, str]], name: str, hops: int) -> list[tuple[int, str]]:
    """(layer, entry) pairs to prioritize for ``name``, symlinks followed; [] if missing."""
    parts = name.split("/")
    for k in range(1, len(parts) + 1):
        prefix = "/".join(parts[:k])
        holder = next((i for i in reversed(range(len(layers))) if prefix in layers[i]), None)
        if holder is None or not name:
            if k == len(parts) or not name:
                return []
            continue  # tars may leave out parent directories
        target = layers[holder][prefix]
        if k == len(parts) and not target:
            return [(holder, name)]
        if not target:
            continue
        if hops >= _MAX_SYMLINKS:
            return []
        base = "/" if target.startswith("/") else "/" + posixpath.dirname(prefix)
        # Resolved inside the rootfs: ``..`` stops at the root, as it does in a container.
        rest = posixpath.normpath(posixpath.join(base, target, *parts[k:])).lstrip("/")
        followed = _resolve(layers, rest, hops + 1) if rest else []
        return [(holder, prefix), *followed] if k == len(parts) and followed else followed
    return []


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


async def _download(registry: Registry, ref: Reference, desc: Descriptor, path: Path,
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


async def _stage(registry: Registry, src: Reference, desc: Descriptor, diff_id: Digest,
                 opts: Options, work: Path, what: str) -> _Staged:
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
        return _Staged(blob, None, {}, annotations)
    await trio.to_thread.run_sync(_unlink, blob)
    names = await trio.to_thread.run_sync(_tar_names, tar, what) if opts.prioritize else {}
    return _Staged(blob, tar, names, None)


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


async def _finish(registry: Registry, src: Reference, dst: Reference, desc: Descriptor,
                  staged: _Staged, prioritized: Sequence[str], opts: Options, work: Path,
                  what: str) -> tuple[Descriptor, Digest | None]:
    """Push the layer (copied or rewritten); its descriptor, and its new diff ID if any."""
    kept = {k: v for k, v in desc.annotations.items() if k not in _LAZY_ANNOTATIONS}
    media_type = _MEDIA_TYPE[opts.format]
    if staged.keep is not None:
        mount = src.path if src.domain == dst.domain else None
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


async def _convert_manifest(registry: Registry, src: Reference, dst: Reference, data: bytes,
                            media_type: str, opts: Options) -> tuple[bytes, Platform]:
    """Convert every layer of one image manifest; returns the new manifest (pushed by the
    caller) and the image's platform."""
    manifest = parse_manifest(data, media_type)
    config_bytes = await registry.fetch_blob(src, manifest.config)
    config = parse_config(config_bytes)
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidArgument(f"{src}: config lists {len(config.diff_ids)} diff IDs for "
                              f"{len(manifest.layers)} layers")
    n = len(manifest.layers)
    staged: list[_Staged | None] = [None] * n
    done: list[tuple[Descriptor, Digest | None] | None] = [None] * n
    with tempfile.TemporaryDirectory(prefix="snapfs-convert-") as tmp:
        works = [Path(tmp, str(i)) for i in range(n)]
        for w in works:
            w.mkdir()

        async def stage(i: int) -> None:
            what = f"{src}: layer {i} ({manifest.layers[i].digest.short()})"
            staged[i] = await _stage(registry, src, manifest.layers[i], config.diff_ids[i],
                                     opts, works[i], what)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(stage, i)
        ready = [s for s in staged if s is not None]
        per_layer, missed = assign_prioritized([s.names for s in ready], opts.prioritize)
        for path in missed:
            log.warning("%s: prioritized file %s is in no layer", src, path)

        async def finish(i: int) -> None:
            what = f"{src}: layer {i} ({manifest.layers[i].digest.short()})"
            done[i] = await _finish(registry, src, dst, manifest.layers[i], ready[i],
                                    per_layer[i], opts, works[i], what)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(finish, i)
    layers = [d for d in done if d is not None]
    new_config = _new_config(config.raw, [new or old for (_, new), old
                                          in zip(layers, config.diff_ids, strict=True)])
    config_desc = Descriptor(mt.OCI_CONFIG, digest_bytes(new_config), len(new_config))
    await registry.push_blob(dst, new_config, config_desc.digest)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": config_desc.to_json(),
                           "layers": [d.to_json() for d, _ in layers]}
    if manifest.annotations:
        doc["annotations"] = dict(manifest.annotations)
    return json.dumps(doc, separators=(",", ":")).encode(), config.platform


def _new_config(raw: Mapping[str, Any], diff_ids: Sequence[Digest]) -> bytes:
    """The source config with only ``rootfs.diff_ids`` replaced (history and order kept)."""
    obj = dict(raw)
    obj["rootfs"] = {**obj["rootfs"], "diff_ids": [str(d) for d in diff_ids]}
    return json.dumps(obj, separators=(",", ":")).encode()


def _is_image(desc: Descriptor) -> bool:
    """Index entries that are images: not attestations (buildkit's ``unknown/unknown``)."""
    if desc.annotations.get("vnd.docker.reference.type"):
        return False
    return desc.media_type in mt.MANIFEST_TYPES and (
        desc.platform is None or desc.platform.os != "unknown")


async def convert_image(registry: Registry, src: Reference, dst: Reference, *,
                        format: Format = "estargz", prioritize: Sequence[str] = (),
                        chunk_size: int = DEFAULT_CHUNK_SIZE, platform: Platform | None = None,
                        all_platforms: bool = False) -> Digest:
    """Convert ``src`` to ``format`` and push it at ``dst``; returns the pushed manifest's
    digest (the index's, when ``all_platforms`` converts a multi-platform image).

    ``prioritize``: paths (as in the rootfs) to put first in their layers, before the
    ``.prefetch.landmark``. An index resolves to ``platform`` (the host's by default)
    unless ``all_platforms``.
    """
    if format not in FORMATS:
        raise InvalidArgument(f"convert {src}: unknown format {format!r} "
                              f"(want {' or '.join(FORMATS)})")
    if dst.digest is not None:
        raise InvalidArgument(f"convert to {dst}: the target must be a tag, not a digest")
    if chunk_size <= 0:
        raise InvalidArgument(f"convert {src}: chunk size must be positive, got {chunk_size}")
    opts = Options(format, tuple(prioritize), chunk_size)
    desc, data = await registry.fetch_manifest(src, src.object)
    if desc.media_type in mt.INDEX_TYPES:
        if all_platforms:
            return await _convert_index(registry, src, dst, data, desc.media_type, opts)
        what = manifest_what(src, src.object)
        chosen = select_platform(parse_manifest_json(what, data), platform or host_platform(),
                                 f"{src}")
        desc, data = await registry.fetch_manifest(src, str(chosen.digest))
    if desc.media_type not in mt.MANIFEST_TYPES:
        raise InvalidArgument(f"{src}: unsupported manifest media type {desc.media_type!r}")
    manifest, _ = await _convert_manifest(registry, src, dst, data, desc.media_type, opts)
    digest = await registry.push_manifest(dst, manifest, mt.OCI_MANIFEST)
    log.info("converted %s to %s at %s (%s)", src, format, dst, digest.short())
    return digest


async def _convert_index(registry: Registry, src: Reference, dst: Reference, data: bytes,
                         media_type: str, opts: Options) -> Digest:
    index = parse_index(data, media_type)
    entries: list[dict[str, Any]] = []
    for entry in index.manifests:
        if not _is_image(entry):
            log.info("%s: skipping index entry %s (%s)", src, entry.digest.short(),
                     entry.media_type)
            continue
        desc, body = await registry.fetch_manifest(src, str(entry.digest))
        manifest, platform = await _convert_manifest(registry, src, dst, body, desc.media_type,
                                                     opts)
        digest = await registry.push_manifest(dst.with_object(str(digest_bytes(manifest))),
                                              manifest, mt.OCI_MANIFEST)
        new = Descriptor(mt.OCI_MANIFEST, digest, len(manifest), dict(entry.annotations),
                         entry.platform or platform)
        entries.append(new.to_json())
    if not entries:
        raise InvalidArgument(f"{src}: index has no image manifests to convert")
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    if index.annotations:
        doc["annotations"] = dict(index.annotations)
    out = json.dumps(doc, separators=(",", ":")).encode()
    digest = await registry.push_manifest(dst, out, mt.OCI_INDEX)
    log.info("converted %s (%d images) to %s at %s (%s)", src, len(entries), opts.format, dst,
             digest.short())
    return digest
