"""What the image manifest vouches for about a lazy layer: its TOC digest.

The chain of trust of a lazy layer: the manifest is trusted by its digest (from the
reference, the index, or containerd's ``cri.manifest-digest`` label); its layer descriptor
carries the TOC digest (eStargz ``containerd.io/snapshot/stargz/toc.digest``, zstd:chunked
``…zstd-chunked.manifest-checksum``); the TOC is verified against it before the layer is
mounted (``content.lazyformat.load_lazy_layer``), and every chunk against the verified TOC.

Where the digest comes from, in order:

1. the ``containerd.io/snapshot/stargz/toc.digest`` label: containerd passes a layer
   descriptor's ``containerd.io/snapshot/`` annotations as labels (CRI and ``ctr-remote``
   alike), so it is the manifest's own value as containerd verified it;
2. the manifest itself, fetched by the digest of the ``cri.manifest-digest`` label (verified
   by digest), or resolved from the image reference (a tag is trusted as far as containerd
   trusted it when it resolved the same tag).

A layer whose manifest declares no TOC digest is handled by ``[verify] toc``: ``require``
(the default) unpacks it natively, verified by its layer digest as containerd would;
``warn`` mounts it lazily with a warning, its chunks checked against an unverified TOC.

Must not index or mount layers (``snapfs.lazy.layers`` does), nor cache anything on disk.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from content.descriptor import Descriptor
from content.digest import Digest, parse_digest
from content.errors import InvalidArgument
from content.image import Manifest, parse_config, parse_index, parse_manifest
from content.mediatypes import ANN_STARGZ_TOC_DIGEST, INDEX_TYPES
from content.reference import Reference
from content.zstdchunked import checksum_annotation

log = logging.getLogger(__name__)

TocPolicy = Literal["require", "warn"]
TOC_POLICIES: tuple[TocPolicy, ...] = ("require", "warn")
LABEL_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
_CACHED_MANIFESTS = 64  # an image's layers are prepared one after another: one fetch each


class ManifestSource(Protocol):
    """What trust needs of a registry client (``content.registry.Registry``)."""

    async def fetch_manifest(self, ref: Reference, obj: str) -> tuple[Descriptor, bytes]: ...

    async def fetch_blob(self, ref: Reference, desc: Descriptor) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Vouched:
    """A layer as its manifest describes it."""

    toc_digest: Digest | None  # None: the manifest declares none
    annotations: Mapping[str, str] = field(default_factory=dict)  # the layer descriptor's
    source: str = ""  # where it came from, for messages: "label", "manifest sha256:…"


def toc_digest_of(annotations: Mapping[str, str], what: str) -> Digest | None:
    """The TOC digest a layer descriptor's annotations declare (either format), if any."""
    text = annotations.get(ANN_STARGZ_TOC_DIGEST) or checksum_annotation(annotations)
    if not text:
        return None
    try:
        return parse_digest(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: the manifest's TOC digest is malformed: {exc}") from None


class ManifestTrust:
    """Finds the TOC digest a layer's manifest vouches for; remembers recent manifests."""

    def __init__(self, source: ManifestSource) -> None:
        self._source = source
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()

    async def vouched(self, ref: Reference, layer: Digest, labels: Mapping[str, str],
                      what: str) -> Vouched:
        label = labels.get(ANN_STARGZ_TOC_DIGEST)
        if label:
            ann = {ANN_STARGZ_TOC_DIGEST: label}
            return Vouched(toc_digest_of(ann, what), ann, "label")
        key = labels.get(LABEL_MANIFEST_DIGEST) or ref.object
        found = await self._find(ref, key, layer)
        if found is None:
            raise InvalidArgument(f"{what}: not a layer of manifest {key} of {ref}")
        digest, desc = found
        return Vouched(toc_digest_of(desc.annotations, what), dict(desc.annotations),
                       f"manifest {digest}")

    async def manifest_digest(self, ref: Reference, layer: Digest, labels: Mapping[str, str],
                              what: str) -> Digest:
        """The digest of the image manifest that lists ``layer`` (a gzip index's subject)."""
        key = labels.get(LABEL_MANIFEST_DIGEST) or ref.object
        found = await self._find(ref, key, layer)
        if found is None:
            raise InvalidArgument(f"{what}: not a layer of manifest {key} of {ref}")
        return found[0]

    async def diff_id(self, ref: Reference, layer: Digest, labels: Mapping[str, str],
                      what: str) -> Digest:
        """The diffID the image config lists for ``layer``: what its uncompressed stream must
        hash to once the layer is complete (the config is fetched by digest, so verified)."""
        key = labels.get(LABEL_MANIFEST_DIGEST) or ref.object
        found = await self._find(ref, key, layer)
        if found is None:
            raise InvalidArgument(f"{what}: not a layer of manifest {key} of {ref}")
        manifest = self._manifests[str(found[0])]
        config = parse_config(await self._source.fetch_blob(ref, manifest.config))
        for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=False):
            if desc.digest == layer:
                return diff_id
        raise InvalidArgument(f"{what}: the config of manifest {found[0]} lists no diffID "
                              "for it")

    async def _find(self, ref: Reference, obj: str,
                    layer: Digest) -> tuple[Digest, Descriptor] | None:
        """The manifest (``obj``, or one listed by the index ``obj`` is) holding ``layer``."""
        cached = self._manifests.get(obj) if ":" in obj else None  # tags move: never cached
        if cached is not None:
            self._manifests.move_to_end(obj)
            manifests = [(parse_digest(obj), cached)]
        else:
            desc, data = await self._source.fetch_manifest(ref, obj)
            if desc.media_type in INDEX_TYPES:
                for entry in parse_index(data, desc.media_type).manifests:
                    found = await self._find(ref, str(entry.digest), layer)
                    if found is not None:
                        return found
                return None
            manifest = parse_manifest(data, desc.media_type)
            self._remember(str(desc.digest), manifest)
            manifests = [(desc.digest, manifest)]
        for digest, manifest in manifests:
            for d in manifest.layers:
                if d.digest == layer:
                    return digest, d
        return None

    def _remember(self, digest: str, manifest: Manifest) -> None:
        self._manifests[digest] = manifest
        while len(self._manifests) > _CACHED_MANIFESTS:
            self._manifests.popitem(last=False)


__all__ = ["TOC_POLICIES", "ManifestSource", "ManifestTrust", "TocPolicy", "Vouched",
           "toc_digest_of"]
