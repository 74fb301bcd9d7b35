"""Push built images (content.image) to a registry: blobs first, then the manifest.

The order is what registries require: a manifest is accepted only when every blob it
names is already in the repository, and an index only when its manifests are.

Must not build images: it pushes what ``content.image`` built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from content.digest import Digest, digest_bytes
from content.errors import DigestMismatch
from content.image import Image, make_index
from content.mediatypes import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX
from content.reference import Reference
from content.registry import Registry

log = logging.getLogger(__name__)


async def _push_blobs(registry: Registry, ref: Reference, image: Image) -> None:
    blobs = {layer.digest: layer.blob for layer in image.layers}
    blobs[image.config_descriptor.digest] = image.config
    async with trio.open_nursery() as nursery:
        for digest, data in blobs.items():
            nursery.start_soon(_push_blob, registry, ref, data, digest)


async def _push_blob(registry: Registry, ref: Reference, data: bytes, digest: Digest) -> None:
    got = await registry.push_blob(ref, data, digest)
    if got != digest:
        raise DigestMismatch(f"blob pushed to {ref.locator}", str(digest), str(got))


async def _push_manifest_of(registry: Registry, ref: Reference, image: Image) -> Digest:
    await _push_blobs(registry, ref, image)
    got = await registry.push_manifest(ref, image.manifest, image.media_type)
    if got != image.digest:
        raise DigestMismatch(f"manifest pushed to {ref}", str(image.digest), str(got))
    return got


async def push_image(registry: Registry, ref: Reference, image: Image) -> Digest:
    """Push ``image`` (layers, config, manifest) to ``ref``'s tag (or digest); returns the
    manifest digest."""
    digest = await _push_manifest_of(registry, ref, image)
    log.info("pushed %s (%s, %d layers)", ref, digest.short(), len(image.layers))
    return digest


async def push_index(registry: Registry, ref: Reference, images: Sequence[Image]) -> Digest:
    """Push every image by digest, then an index of them to ``ref``; returns the index
    digest. The index is OCI unless the images carry Docker manifests."""
    for image in images:
        await _push_manifest_of(registry, ref.with_object(str(image.digest)), image)
    oci = not all(img.media_type == DOCKER_MANIFEST for img in images)
    data = make_index(images, oci=oci)
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    got = await registry.push_manifest(ref, data, media_type)
    expected = digest_bytes(data)
    if got != expected:
        raise DigestMismatch(f"index pushed to {ref}", str(expected), str(got))
    log.info("pushed index %s (%s, %d images)", ref, got.short(), len(images))
    return got
