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

This module holds the image level: the prioritize plan (pure), the manifest, config and index
around the layers, and the order of the work (every layer staged, then the plan, then every
layer finished). One layer's download, rewrite and push are ``content.convert_layers``'s.
Must not touch a layer's bytes itself.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from content import mediatypes as mt
from content.chunkedtar import DEFAULT_CHUNK_SIZE
from content.convert_layers import (
    FORMATS,
    ConvertProgress,
    Format,
    ImageSource,
    NoProgress,
    Options,
    Staged,
    finish_layer,
    stage_layer,
)
from content.descriptor import Descriptor, Platform, host_platform
from content.digest import Digest, digest_bytes
from content.errors import InvalidArgument
from content.image import parse_config, parse_index, parse_manifest
from content.reference import Reference
from content.registry import Registry
from content.registry_manifests import manifest_what, parse_manifest_json, select_platform
from content.toc import normalize_name

log = logging.getLogger(__name__)

_MAX_SYMLINKS = 40  # as Linux's path walk


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


async def _convert_manifest(registry: Registry, source: ImageSource, src: Reference,
                            dst: Reference, data: bytes, media_type: str, opts: Options,
                            progress: ConvertProgress) -> tuple[bytes, Platform]:
    """Convert every layer of one image manifest; returns the new manifest (pushed by the
    caller) and the image's platform."""
    manifest = parse_manifest(data, media_type)
    progress.image(str(src), manifest.layers)
    config_bytes = await source.fetch_blob(src, manifest.config)
    config = parse_config(config_bytes)
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidArgument(f"{src}: config lists {len(config.diff_ids)} diff IDs for "
                              f"{len(manifest.layers)} layers")
    n = len(manifest.layers)
    staged: list[Staged | None] = [None] * n
    done: list[tuple[Descriptor, Digest | None] | None] = [None] * n
    with tempfile.TemporaryDirectory(prefix="snapfs-convert-") as tmp:
        works = [Path(tmp, str(i)) for i in range(n)]
        for w in works:
            w.mkdir()

        async def stage(i: int) -> None:
            what = f"{src}: layer {i} ({manifest.layers[i].digest.short()})"
            staged[i] = await stage_layer(source, src, manifest.layers[i], config.diff_ids[i],
                                          opts, works[i], what)
            progress.layer(manifest.layers[i], "downloaded", manifest.layers[i].size)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(stage, i)
        ready = [s for s in staged if s is not None]
        per_layer, missed = assign_prioritized([s.names for s in ready], opts.prioritize)
        for path in missed:
            log.warning("%s: prioritized file %s is in no layer", src, path)

        async def finish(i: int) -> None:
            what = f"{src}: layer {i} ({manifest.layers[i].digest.short()})"
            done[i] = await finish_layer(registry, src, dst, manifest.layers[i], ready[i],
                                         per_layer[i], opts, works[i], what,
                                         can_mount=source is registry)
            progress.layer(manifest.layers[i], "copied" if ready[i].keep is not None
                           else "converted")

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
                        all_platforms: bool = False, source: ImageSource | None = None,
                        progress: ConvertProgress | None = None) -> Digest:
    """Convert ``src`` to ``format`` and push it at ``dst``; returns the pushed manifest's
    digest (the index's, when ``all_platforms`` converts a multi-platform image).

    ``prioritize``: paths (as in the rootfs) to put first in their layers, before the
    ``.prefetch.landmark``. An index resolves to ``platform`` (the host's by default)
    unless ``all_platforms``. ``source``: where ``src`` is read from (default: ``registry``;
    an OCI layout, ``content.ocilayout``); ``progress`` hears of every layer's steps.
    """
    reader: ImageSource = registry if source is None else source
    told: ConvertProgress = NoProgress() if progress is None else progress
    if format not in FORMATS:
        raise InvalidArgument(f"convert {src}: unknown format {format!r} "
                              f"(want {' or '.join(FORMATS)})")
    if dst.digest is not None:
        raise InvalidArgument(f"convert to {dst}: the target must be a tag, not a digest")
    if chunk_size <= 0:
        raise InvalidArgument(f"convert {src}: chunk size must be positive, got {chunk_size}")
    opts = Options(format, tuple(prioritize), chunk_size)
    desc, data = await reader.fetch_manifest(src, src.object)
    if desc.media_type in mt.INDEX_TYPES:
        if all_platforms:
            return await _convert_index(registry, reader, src, dst, data, desc.media_type,
                                        opts, told)
        what = manifest_what(src, src.object)
        chosen = select_platform(parse_manifest_json(what, data), platform or host_platform(),
                                 f"{src}")
        desc, data = await reader.fetch_manifest(src, str(chosen.digest))
    if desc.media_type not in mt.MANIFEST_TYPES:
        raise InvalidArgument(f"{src}: unsupported manifest media type {desc.media_type!r}")
    manifest, _ = await _convert_manifest(registry, reader, src, dst, data, desc.media_type,
                                          opts, told)
    digest = await registry.push_manifest(dst, manifest, mt.OCI_MANIFEST)
    log.info("converted %s to %s at %s (%s)", src, format, dst, digest.short())
    return digest


async def _convert_index(registry: Registry, source: ImageSource, src: Reference,
                         dst: Reference, data: bytes, media_type: str, opts: Options,
                         progress: ConvertProgress) -> Digest:
    index = parse_index(data, media_type)
    entries: list[dict[str, Any]] = []
    for entry in index.manifests:
        if not _is_image(entry):
            log.info("%s: skipping index entry %s (%s)", src, entry.digest.short(),
                     entry.media_type)
            continue
        desc, body = await source.fetch_manifest(src, str(entry.digest))
        manifest, platform = await _convert_manifest(registry, source, src, dst, body,
                                                     desc.media_type, opts, progress)
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


__all__ = ["FORMATS", "Format", "assign_prioritized", "convert_image"]
