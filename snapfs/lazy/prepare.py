"""A lazy Prepare's two slow steps, overlapped: indexing the layer and serving the mount.

Measured on the python image (one eStargz layer of 77 MB, 8344 files, 100 Mbit/s + 20 ms):
a first lazy Prepare spent ~0.25 s fetching and parsing the TOC, then ~0.45 s starting
``snapfs fuse-server`` (a Python process importing trio and pyfuse3), one after the other.
The server's start needs nothing from the index, so it begins as soon as the indexer knows
the layer is a lazy one (``Indexer.index``'s ``lazy_hint``: its manifest vouches for a TOC
digest, or its footer is lazy) and runs while the TOC is fetched and parsed. A layer that
turns out plain never starts a server (a root with no lazy layers keeps having no mount).

Then the server indexes the layer itself (it trusts only what it verified: it checks and
parses the same TOC again and builds its tree, ~0.3 s for 10k files), which followed the
daemon's own parse. Both processes now index at once: as soon as the TOC's bytes are in
(``Indexer.index``'s ``toc_fetched``), they go to the server (``LayerMount.preload``) while
this process checks and parses them; the Prepare's add then finds the layer there. A
Prepare that fails after a preload takes the layer off the server again.

Must not add, record or fetch anything past the index (``snapfs.lazy.layers`` does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import trio

from content.digest import Digest
from content.errors import ContentError
from content.lazyformat import LazyLayer
from content.reference import Reference
from snapfs.errors import single_errors
from snapfs.lazy.indexer import Indexer
from snapfs.lazy.layerdb import LayerRecord, layer_id
from snapfs.lazy.mount import LayerMount

Indexed = tuple[LazyLayer, int, dict[int, bytes]]


async def index_and_serve(indexer: Indexer, mount: LayerMount, key: str, ref: Reference,
                          digest: Digest, labels: Mapping[str, str],
                          what: str) -> tuple[Indexed | None, bool]:
    """The layer's index (None: unpack natively) and whether the mount is served (only
    asked for a layer that is lazy; False then means "pull natively" too)."""
    served: list[bool] = []
    preloaded: list[str] = []
    # A nursery wraps the index's own error in a group: callers expect the error itself
    # (an InvalidArgument naming the layer, an Unavailable).
    try:
        with single_errors():
            found = await _index_serving(indexer, mount, served, preloaded, key, ref, digest,
                                         labels, what)
    except BaseException:
        await _unload(mount, preloaded)
        raise
    if found is None:
        await _unload(mount, preloaded)
        return None, False
    if not served:  # no hint (a gzip side index), or the mount was served already
        served.append(await mount.ensure_served())
    return found, served[0]


async def _index_serving(indexer: Indexer, mount: LayerMount, served: list[bool],
                         preloaded: list[str], key: str, ref: Reference, digest: Digest,
                         labels: Mapping[str, str], what: str) -> Indexed | None:
    serving = trio.Event()

    async def serve() -> None:
        try:
            served.append(await mount.ensure_served())
        finally:
            serving.set()

    async def preload(rec: LayerRecord, ranges: dict[int, bytes]) -> None:
        if not mount.served:
            await serving.wait()
        if mount.served and await mount.preload(rec, ranges):
            preloaded.append(layer_id(rec.digest))

    async with trio.open_nursery() as nursery:
        started = False

        def hint() -> None:
            nonlocal started
            if not started and not mount.served:
                started = True
                nursery.start_soon(serve)
            elif not started:
                serving.set()  # served already: a preload need not wait

        def toc_fetched(rec: LayerRecord, ranges: dict[int, bytes]) -> None:
            nursery.start_soon(preload, rec, ranges)

        return await indexer.index(key, ref, digest, labels, what, lazy_hint=hint,
                                   toc_fetched=toc_fetched)


async def _unload(mount: LayerMount, preloaded: list[str]) -> None:
    """A layer the server indexed ahead whose Prepare then failed: nothing may stay."""
    with trio.CancelScope(shield=True):
        for ident in preloaded:
            with contextlib.suppress(ContentError, OSError):
                await mount.remove_layer(ident)


__all__ = ["Indexed", "index_and_serve"]
