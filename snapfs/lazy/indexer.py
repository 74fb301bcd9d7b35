"""Indexing the layer a Prepare names: its size, what its manifest vouches for, its TOC.

For ``prepare_remote``: the blob's size (HEAD), the TOC digest the manifest vouches for
(``snapfs.lazy.trust``), then the footer and TOC with a Range request or two
(``content.lazyformat.load_lazy_layer``, which refuses a TOC that does not match). The
reads are recorded: a restart replays exactly them to index the layer again, with no request.
None means "unpack natively": a plain layer, a blob or manifest this process cannot see, or a
lazy layer whose manifest declares no TOC digest under ``[verify] toc = "require"``.

Errors: a registry that does not answer within ``timeout`` is Unavailable (never a hang);
a lazy layer whose TOC is malformed or does not verify is InvalidArgument naming the layer
(and both digests). Must not mount or record anything: it only reads and decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from content.digest import Digest
from content.errors import NotFound, Unauthorized, Unavailable
from content.lazyformat import FOOTER_PROBE, LazyLayer, load_lazy_layer, parse_footer
from content.reference import Reference
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

    async def index(self, key: str, ref: Reference, digest: Digest, labels: Mapping[str, str],
                    what: str) -> tuple[LazyLayer, int, dict[int, bytes]] | None:
        """The indexed layer, its blob size and the ranges its index came from; or None."""
        recorder = Recorder(self._source, ref, digest)
        try:
            with trio.fail_after(self._timeout):
                size = await self._source.blob_size(ref, digest)
                vouched = await self._vouched(ref, digest, labels, what)
                if vouched.toc_digest is None and not await self._unvouched_allowed(
                        recorder, size, what):
                    return None
                # The footer, not the annotations' position, locates the TOC: a restart
                # replays exactly these reads (recorded ranges) to index it again.
                layer = await load_lazy_layer(recorder, size, what=what,
                                              toc_digest=vouched.toc_digest,
                                              tail_size=self._tail_size)
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

    async def _unvouched_allowed(self, read: Recorder, size: int, what: str) -> bool:
        """Whether a layer its manifest declares no TOC digest for may be mounted lazily
        (``[verify] toc``). A plain layer (no lazy footer) is native, and says nothing."""
        n = min(max(self._tail_size, FOOTER_PROBE), size)
        if parse_footer(await read(size - n, n), size, what) is None:
            return False
        if self._toc_policy == "require":
            log.warning("%s: its manifest vouches for no TOC digest; unpacking natively "
                        "([verify] toc = \"require\")", what)
            return False
        log.warning("%s: mounting lazily with an unverified TOC: its manifest declares no TOC "
                    "digest ([verify] toc = \"warn\")", what)
        return True


__all__ = ["Indexer"]
