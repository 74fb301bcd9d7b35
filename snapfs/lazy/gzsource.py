"""Finding a plain gzip layer's side index: a referrer of its image manifest.

For a layer with no lazy footer, :class:`GzipIndexes` asks the registry for the referrers of
the manifest that lists the layer (``snapfs.lazy.trust`` knows which one), keeps those of
artifact type ``content.gzindex.ARTIFACT_TYPE``, and fetches the index blob whose
``content.gzindex.ANN_LAYER`` annotation names the layer (by digest: verified). The index
must name that layer and blob size, and pass ``content.gzlayer``'s structural checks.

No referrer, or none for this layer: one info line, native pull. An artifact whose subject
is another manifest, or an index that does not match: a warning, native pull. Trust: see
``content.gzlayer`` — the index is not vouched for by the manifest; its span and part digests
are what reads are checked against, and the completed layer is checked against the layer
digest and the diffID before it is materialised.

Must not mount anything: it finds and parses.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import trio

from content.descriptor import Descriptor
from content.digest import Digest, digest_bytes
from content.errors import InvalidArgument, NotFound, Unauthorized
from content.gzindex import ANN_LAYER, ARTIFACT_TYPE
from content.gzlayer import gzip_lazy_layer, parse_gzip_index
from content.lazyformat import LazyLayer
from content.reference import Reference
from content.referrers import Referrer

log = logging.getLogger(__name__)

_PARSE_LIMITER = trio.CapacityLimiter(1)
_CACHED = 16


@runtime_checkable
class ReferrerSource(Protocol):
    async def referrers(self, ref: Reference, subject: Digest,
                        artifact_type: str = "") -> list[Referrer]: ...

    async def fetch_manifest(self, ref: Reference, obj: str) -> tuple[Descriptor, bytes]: ...

    async def fetch_blob(self, ref: Reference, desc: Descriptor) -> bytes: ...


def load_index(data: bytes, layer: Digest, size: int, what: str) -> LazyLayer:
    """The lazy layer from an index's bytes (validated; blocking, CPU-bound)."""
    index = parse_gzip_index(data, layer=layer, blob_size=size, what=what)
    return gzip_lazy_layer(index, digest_bytes(data), what)


class GzipIndexes:
    """Looks up side indexes; remembers each manifest's referrers (layers come in a row)."""

    def __init__(self, source: ReferrerSource) -> None:
        self._source = source
        self._referrers: OrderedDict[str, list[Referrer]] = OrderedDict()

    async def find(self, key: str, ref: Reference, manifest: Digest, layer: Digest, size: int,
                   what: str) -> tuple[LazyLayer, bytes] | None:
        """The layer mounted from its index and the index's bytes, or None (native)."""
        try:
            found = self._referrers.get(str(manifest))
            if found is None:
                found = await self._source.referrers(ref, manifest, ARTIFACT_TYPE)
                self._referrers[str(manifest)] = found
                while len(self._referrers) > _CACHED:
                    self._referrers.popitem(last=False)
            for r in found:
                _, raw = await self._source.fetch_manifest(ref, str(r.desc.digest))
                doc = json.loads(raw)
                subject = (doc.get("subject") or {}).get("digest")
                if subject != str(manifest):
                    log.warning("snapshot %s: %s: gzip index artifact %s names subject %s, not "
                                "manifest %s; ignored", key, what, r.desc.digest.short(),
                                subject, manifest)
                    continue
                for blob in doc.get("layers") or []:
                    if (blob.get("annotations") or {}).get(ANN_LAYER) != str(layer):
                        continue
                    desc = Descriptor.from_json(blob)
                    data = await self._source.fetch_blob(ref, desc)
                    lazy = await trio.to_thread.run_sync(load_index, data, layer, size, what,
                                                         limiter=_PARSE_LIMITER)
                    return lazy, data
        except (NotFound, Unauthorized) as exc:
            log.info("snapshot %s: %s is plain gzip and its referrers cannot be read (%s); "
                     "unpacking natively", key, what, exc)
            return None
        except (InvalidArgument, ValueError, AttributeError) as exc:
            log.warning("snapshot %s: %s: its gzip index does not match (%s); ignored, "
                        "unpacking natively", key, what, exc)
            return None
        log.info("snapshot %s: %s is plain gzip with no gzip index among %d referrer(s) of "
                 "manifest %s; unpacking natively", key, what, len(found), manifest.short())
        return None


__all__ = ["GzipIndexes", "ReferrerSource", "load_index"]
