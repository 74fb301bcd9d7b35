"""Indexing the layer a Prepare names: its size, what its manifest vouches for, its TOC.

For ``prepare_remote``: the blob's size (HEAD), the TOC digest the manifest vouches for
(``snapfs.lazy.trust``), then the footer and TOC with a Range request or two
(``content.lazyformat.load_lazy_layer``, which refuses a TOC that does not match). The
reads are recorded: a restart replays exactly them to index the layer again, with no request.
A plain gzip layer may still be lazy through a side index found among the referrers of its
manifest (``snapfs.lazy.gzsource``); its record then keeps the index's bytes as its one
"range" (at 0), replayed the same way (``reload_layer``).
None means "unpack natively": a plain layer, a blob or manifest this process cannot see, or a
lazy layer whose manifest declares no TOC digest under ``[verify] toc = "require"``.

Errors: a registry that does not answer within ``timeout`` is Unavailable (never a hang);
a lazy layer whose TOC is malformed or does not verify is InvalidArgument naming the layer
(and both digests). Must not mount or record anything: it only reads and decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from content.digest import Digest, verify_bytes
from content.errors import InvalidArgument, NotFound, Unauthorized, Unavailable
from content.lazyformat import FOOTER_PROBE, LazyLayer, load_lazy_layer, parse_footer
from content.reference import Reference, parse_reference
from snapfs.lazy.gzsource import GzipIndexes, ReferrerSource, load_index
from snapfs.lazy.layerdb import LayerRecord
from snapfs.lazy.source import LayerSource, Recorder
from snapfs.lazy.trust import ManifestTrust, TocPolicy, Vouched

log = logging.getLogger(__name__)


class Indexer:
    """Indexes layers for one layer registry."""

    def __init__(self, source: LayerSource, trust: ManifestTrust, *, timeout: float,
                 tail_size: int, toc_policy: TocPolicy) -> None:
        self._source = source
        self._trust = trust
        self._timeout = timeout
        self._tail_size = tail_size
        self._toc_policy = toc_policy
        # In-memory test sources may not speak referrers: their plain layers are native.
        self._gzip = GzipIndexes(source) if isinstance(source, ReferrerSource) else None

    async def index(self, key: str, ref: Reference, digest: Digest, labels: Mapping[str, str],
                    what: str, *, lazy_hint: Callable[[], None] | None = None,
                    toc_fetched: Callable[[LayerRecord, dict[int, bytes]], None] | None = None,
                    ) -> tuple[LazyLayer, int, dict[int, bytes]] | None:
        """The indexed layer, its blob size and the ranges its index came from; or None.
        ``lazy_hint`` is called once the layer is known to be a lazy format about to be
        indexed (its manifest vouches for a TOC, or its footer is lazy): what the caller
        needs next (the FUSE server) can start while the TOC is fetched and parsed.
        ``toc_fetched`` is given the layer's record and reads once they are all in, before
        this process checks and parses them, for a layer whose manifest vouches for its TOC
        (the record names that digest): a FUSE server can index the same reads meanwhile,
        verifying them against it as it would on any add."""
        recorder = Recorder(self._source, ref, digest)
        try:
            with trio.fail_after(self._timeout):
                # The manifest first: a vouched TOC (usually a label, no request) hints at
                # once, and the FUSE server starts beside the HEAD too.
                vouched = await self._vouched(ref, digest, labels, what)
                if vouched.toc_digest is not None and lazy_hint is not None:
                    lazy_hint()
                size = await self._source.blob_size(ref, digest)
                if vouched.toc_digest is None and await self._plain(recorder, size, what):
                    return await self._gzip_index(key, ref, digest, size, labels, what)
                if vouched.toc_digest is None and not self._unvouched_allowed(what):
                    return None
                if lazy_hint is not None:
                    lazy_hint()  # an unvouched lazy footer (no-op if hinted already)
                # The footer, not the annotations' position, locates the TOC: a restart
                # replays exactly these reads (recorded ranges) to index it again.
                toc_digest = vouched.toc_digest

                def fetched(fmt: str) -> None:
                    if toc_fetched is not None and toc_digest is not None:
                        toc_fetched(LayerRecord(digest, str(ref), size, fmt, toc_digest),
                                    dict(recorder.ranges))

                layer = await load_lazy_layer(recorder, size, what=what, toc_digest=toc_digest,
                                              tail_size=self._tail_size, fetched=fetched)
        except trio.TooSlowError:
            raise Unavailable(f"{what}: the registry did not answer within "
                              f"{self._timeout:g} s") from None
        except (NotFound, Unauthorized) as exc:
            log.warning("snapshot %s: %s: cannot index it here (%s); unpacking natively",
                        key, what, exc)
            return None
        if layer is None:
            log.info("snapshot %s: %s is not a lazy format; unpacking natively", key, what)
            return None
        return layer, size, dict(recorder.ranges)

    async def _vouched(self, ref: Reference, digest: Digest, labels: Mapping[str, str],
                       what: str) -> Vouched:
        """What the manifest vouches for (a manifest this process cannot see vouches for
        nothing)."""
        try:
            return await self._trust.vouched(ref, digest, labels, what)
        except (NotFound, Unauthorized) as exc:
            return Vouched(None, source=f"no manifest ({exc})")

    async def _plain(self, read: Recorder, size: int, what: str) -> bool:
        """Whether the layer has no lazy footer (not eStargz, not zstd:chunked)."""
        n = min(max(self._tail_size, FOOTER_PROBE), size)
        return parse_footer(await read(size - n, n), size, what) is None

    async def _gzip_index(self, key: str, ref: Reference, digest: Digest, size: int,
                          labels: Mapping[str, str],
                          what: str) -> tuple[LazyLayer, int, dict[int, bytes]] | None:
        """A plain layer mounted from a side index among its manifest's referrers, or None."""
        if self._gzip is None:
            log.info("snapshot %s: %s is not a lazy format; unpacking natively", key, what)
            return None
        try:
            manifest = await self._trust.manifest_digest(ref, digest, labels, what)
        except (NotFound, Unauthorized, InvalidArgument) as exc:
            log.info("snapshot %s: %s is not a lazy format and its manifest is unknown (%s); "
                     "unpacking natively", key, what, exc)
            return None
        found = await self._gzip.find(key, ref, manifest, digest, size, what)
        if found is None:
            return None
        layer, data = found
        return layer, size, {0: data}

    def _unvouched_allowed(self, what: str) -> bool:
        """Whether a lazy layer its manifest declares no TOC digest for may be mounted lazily
        (``[verify] toc``)."""
        if self._toc_policy == "require":
            log.warning("%s: its manifest vouches for no TOC digest; unpacking natively "
                        "([verify] toc = \"require\")", what)
            return False
        log.warning("%s: mounting lazily with an unverified TOC: its manifest declares no TOC "
                    "digest ([verify] toc = \"warn\")", what)
        return True


async def reload_layer(rec: LayerRecord, ranges: Mapping[int, bytes], *,
                       tail_size: int) -> LazyLayer:
    """A recorded layer's index from its recorded ranges (no network; the daemon's restore
    and the FUSE server's rebuild of a view alike)."""
    what = f"layer {rec.digest.short()} of {rec.ref}"
    replay = Recorder(None, parse_reference(rec.ref), rec.digest, dict(ranges))
    if rec.format == "gzip-index":
        data = ranges.get(0, b"")
        verify_bytes(f"{what}: recorded gzip index", data, rec.toc_digest)
        return await trio.to_thread.run_sync(load_index, data, rec.digest, rec.size, what)
    layer = await load_lazy_layer(replay, rec.size, what=what, toc_digest=rec.toc_digest,
                                  tail_size=tail_size)
    if layer is None:
        raise InvalidArgument(f"{what}: recorded ranges hold no lazy footer")
    return layer


__all__ = ["Indexer", "reload_layer"]
