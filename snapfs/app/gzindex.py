"""``snapfs index IMAGE``: side indexes for an image's plain gzip layers, pushed as referrers.

Each gzip layer of at least ``min_layer_size`` bytes is streamed once from the registry and
indexed (``content.gzindex``, verified against the layer digest) in a worker thread. With
``push``, the indexes are pushed as one OCI artifact manifest (``artifactType``
:data:`ARTIFACT_TYPE`) whose ``subject`` is the image manifest, one layer per index with the
indexed layer's digest in the :data:`ANN_LAYER` annotation; it is listed through the
referrers API, or the ``sha256-<hex>`` fallback tag on a registry without it
(``content.referrers``). ``snapfs.lazy.gzsource`` finds it again on a Prepare.

Must not print: results are returned, progress reported through the callback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from content.digest import Digest, digest_bytes, parse_digest
from content.gzindex import (
    ANN_LAYER,
    ARTIFACT_TYPE,
    DEFAULT_SPAN,
    INDEX_MEDIA_TYPE,
    build_gzip_index,
)
from content.mediatypes import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_MANIFEST
from content.reference import Reference
from content.referrers import EMPTY, EMPTY_MEDIA_TYPE
from content.registry import Registry, Resolved, open_registry
from snapfs.app.imageops import parse_image_ref
from snapfs.config import Config

log = logging.getLogger(__name__)

DEFAULT_MIN_LAYER = 10 << 20
GZIP_TYPES = frozenset({OCI_LAYER_GZIP, DOCKER_LAYER_GZIP})


@dataclass(frozen=True, slots=True)
class LayerIndex:
    layer: Digest
    layer_size: int
    index: bytes
    checkpoints: int
    files: int

    @property
    def digest(self) -> Digest:
        return digest_bytes(self.index)


@dataclass(frozen=True, slots=True)
class IndexResult:
    manifest: Digest  # the image manifest indexed
    layers: list[LayerIndex]
    skipped: list[tuple[Digest, str]]  # layers left out, and why
    artifact: Digest | None  # the pushed artifact manifest


async def index_layer(registry: Registry, ref: Reference, layer: Digest, *,
                      span: int = DEFAULT_SPAN, limiter: trio.CapacityLimiter) -> LayerIndex:
    """Stream one gzip layer and index it (verified against ``layer``)."""
    what = f"layer {layer.short()} of {ref}"
    async with registry.stream_blob(ref, layer) as pieces:
        it = aiter(pieces)

        async def next_piece() -> bytes:
            try:
                return await anext(it)
            except StopAsyncIteration:
                return b""

        def read(_n: int) -> bytes:
            return trio.from_thread.run(next_piece)

        data, stats = await trio.to_thread.run_sync(
            lambda: build_gzip_index(read, layer, span=span, what=what), limiter=limiter)
    log.info("%s: indexed (%d checkpoints, %d files, index %d bytes = %.2f%% of %d)", what,
             stats.checkpoints, stats.files, len(data), 100 * len(data) / stats.blob_size,
             stats.blob_size)
    return LayerIndex(layer, stats.blob_size, data, stats.checkpoints, stats.files)


def artifact_manifest(resolved: Resolved, layers: list[LayerIndex]) -> bytes:
    """The artifact manifest naming the image manifest as its subject (pure)."""
    subject = resolved.descriptor
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": str(digest_bytes(EMPTY)),
                   "size": len(EMPTY)},
        "layers": [{"mediaType": INDEX_MEDIA_TYPE, "digest": str(li.digest),
                    "size": len(li.index), "annotations": {ANN_LAYER: str(li.layer)}}
                   for li in layers],
        "subject": {"mediaType": subject.media_type, "digest": str(subject.digest),
                    "size": subject.size},
    }
    return json.dumps(doc, indent=2).encode()


async def index_image(registry: Registry, image: Reference, *, push: bool,
                      span: int = DEFAULT_SPAN, min_layer_size: int = DEFAULT_MIN_LAYER,
                      on_layer: Callable[[LayerIndex], None] | None = None) -> IndexResult:
    """Index ``image``'s gzip layers of at least ``min_layer_size`` bytes; push them if asked."""
    resolved = await registry.resolve(image)
    ref = resolved.name
    limiter = trio.CapacityLimiter(1)  # CPU-bound: one layer at a time on a small machine
    done: list[LayerIndex] = []
    skipped: list[tuple[Digest, str]] = []
    for raw in resolved.manifest.get("layers") or []:
        digest, size = parse_digest(str(raw["digest"])), int(raw["size"])
        media_type = str(raw.get("mediaType", ""))
        if media_type not in GZIP_TYPES:
            skipped.append((digest, f"not gzip ({media_type})"))
        elif size < min_layer_size:
            skipped.append((digest, f"{size} bytes, under {min_layer_size}: fetched whole"))
        else:
            li = await index_layer(registry, ref, digest, span=span, limiter=limiter)
            done.append(li)
            if on_layer is not None:
                on_layer(li)
    artifact = None
    if push and done:
        await registry.push_blob(ref, EMPTY)
        for li in done:
            await registry.push_blob(ref, li.index, li.digest)
        manifest = artifact_manifest(resolved, done)
        pushed = await registry.push_referrer(ref, manifest, ARTIFACT_TYPE)
        artifact = pushed.desc.digest
        log.info("%s: gzip index artifact %s pushed for manifest %s", ref.locator,
                 artifact.short(), resolved.descriptor.digest.short())
    return IndexResult(resolved.descriptor.digest, done, skipped, artifact)




async def index_image_with_config(config: Config, image: str, *, push: bool,
                                  span: int | None,
                                  min_layer_size: int,
                                  docker_config: Path | None = None) -> IndexResult:
    """``snapfs index``: the registry opened with the config's hosts and credentials."""
    async with open_registry(hosts_dir=config.registry.hosts_dir(),
                             docker_config=docker_config or config.registry.docker_config_path(),
                             timeout=config.registry.read_timeout,
                             connect_timeout=config.registry.connect_timeout) as registry:
        return await index_image(registry, parse_image_ref(image), push=push,
                                 span=DEFAULT_SPAN if span is None else span,
                                 min_layer_size=min_layer_size)


__all__ = ["ANN_LAYER", "ARTIFACT_TYPE", "DEFAULT_MIN_LAYER", "IndexResult", "LayerIndex",
           "artifact_manifest", "index_image", "index_image_with_config", "index_layer"]
