"""Which remote layer a Prepare names, and how its index bytes are fetched and remembered.

The pure half of ``snapfs.lazy.layers``: the labels containerd (CRI) and stargz's clients send,
the layer's directory name, and ``Recorder``, the ``read_range`` that records what indexing a
layer read (for its record in ``metadata.lmdb``) or replays it at restart with no network.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument
from content.reference import Reference, parse_reference
from snapfs.lazy.fetcher import RangeSource
from snapfs.lazy.layerdb import layer_id
from snapfs.lazy.trust import ManifestSource
from snapfs.snapshot.labels import (
    LABEL_CRI_IMAGE_LAYERS,
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
)

log = logging.getLogger(__name__)


class LayerSource(RangeSource, ManifestSource, Protocol):
    """What lazy layers need of a registry client (``content.registry.Registry``)."""

    async def blob_size(self, ref: Reference, digest: Digest) -> int: ...


def layer_source(labels: Mapping[str, str]) -> tuple[Reference, Digest] | None:
    """The image reference and layer digest a Prepare's labels name, or None (pure)."""
    for ref_label, digest_label in ((LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST),
                                    (LABEL_STARGZ_REFERENCE, LABEL_STARGZ_DIGEST)):
        ref_text, digest_text = labels.get(ref_label), labels.get(digest_label)
        if not ref_text or not digest_text:
            continue
        try:
            return parse_reference(ref_text), parse_digest(digest_text)
        except InvalidArgument as exc:
            log.warning("remote labels %s / %s unusable: %s", ref_label, digest_label, exc)
    return None


class Recorder:
    """A ``read_range`` that remembers what it read, or replays what was remembered."""

    def __init__(self, source: LayerSource | None, ref: Reference, digest: Digest,
                 ranges: dict[int, bytes] | None = None) -> None:
        self._source = source
        self._ref = ref
        self._digest = digest
        self.ranges: dict[int, bytes] = ranges if ranges is not None else {}

    async def __call__(self, offset: int, length: int) -> bytes:
        # Bytes read once are read from the record again (a probe, then the index).
        for start, data in self.ranges.items():
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start:offset - start + length]
        if self._source is None:
            raise InvalidArgument(f"layer {self._digest.short()}: the record lacks bytes "
                                  f"{offset}+{length} of the blob")
        data = await self._source.fetch_range(self._ref, self._digest, offset, length)
        self.ranges[offset] = data
        return data


def listed_layers(labels: Mapping[str, str]) -> tuple[Digest, ...] | None:
    """The image's layers as the labels list them; None if absent or perhaps truncated
    (containerd cuts the list to fit a 4 KiB label)."""
    text = labels.get(LABEL_CRI_IMAGE_LAYERS) or labels.get(LABEL_STARGZ_LAYERS) or ""
    if not text or len(text) > 3800:
        return None
    try:
        return tuple(parse_digest(d.strip()) for d in text.split(",") if d.strip())
    except InvalidArgument:
        return None


__all__ = ["LABEL_CRI_IMAGE_REF", "LABEL_CRI_LAYER_DIGEST", "LABEL_STARGZ_DIGEST",
           "LABEL_STARGZ_REFERENCE", "LayerSource", "Recorder", "layer_id", "layer_source",
           "listed_layers"]
