"""Giving disk back: what ``snapfs rmi`` does after untagging, and ``snapfs prune``.

In containerd's order: snapshots no image names (and no pull in flight holds) are removed,
children first (``remove_unused_snapshots``: through the Snapshots API, so a daemon's Remove
releases lazy layers as containerd's GC does); blobs of the content store that no image
references and no lease holds are deleted (``content.gc``, the image table and the leases
read inside the delete transaction); then the snapshotter's Cleanup deletes unreferenced
snapshot directories, and the lazy layers drop the chunks and layer directories nothing
needs (``snapfs.lazy.layergc``) — in the daemon when one serves, else in this process.
Ingests nobody writes that are older than ``ingest_age`` go too (0 for ``prune``: a pull in
progress holds its ingest's lock, so it is never taken).

A running container keeps what it uses: its active snapshot keeps its parents, and the lazy
layers under them keep their chunks. Must not print or parse flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from content import gc
from content.digest import Digest, parse_digest
from content.errors import ContentError
from content.image import parse_manifest
from content.leases import active_leases
from content.metadata import Txn
from content.store import ContentStore
from snapfs.app.engine import Engine
from snapfs.app.imageops import remove_unused_snapshots
from snapfs.app.images import ImageStore

DEFAULT_INGEST_AGE = 24 * 3600.0  # seconds: an interrupted pull may resume until then


@dataclass(frozen=True, slots=True)
class Collected:
    snapshots: tuple[str, ...]
    blobs: int
    blob_bytes: int
    ingests: int


def image_roots(images: ImageStore, store: ContentStore, txn: Txn | None = None
                ) -> Iterator[Digest]:
    """Every blob the image table references: manifests, configs and their layers."""
    for record in images.list(txn=txn):
        yield record.target.digest
        yield record.config
        try:
            manifest = parse_manifest(store.read(record.target.digest),
                                      record.target.media_type)
        except (ContentError, OSError):
            continue  # its blob is gone already: nothing more to keep for it
        yield manifest.config.digest
        yield from (d.digest for d in manifest.layers)


def leased_content(root: Path) -> Iterator[Digest]:
    """The blobs the live leases (pulls in flight) of ``root`` hold."""
    for text in active_leases(root).content:
        try:
            yield parse_digest(text)
        except ContentError:
            continue


async def collect_garbage(engine: Engine, *,
                          ingest_age: float = DEFAULT_INGEST_AGE) -> Collected:
    """Remove what nothing references any more; what was removed."""
    removed = await remove_unused_snapshots(engine)

    def roots_in(txn: Txn) -> list[Digest]:
        return [*image_roots(engine.images, engine.store, txn),
                *leased_content(engine.config.root)]

    deleted = await trio.to_thread.run_sync(lambda: gc.collect(engine.store, roots_in=roots_in))
    ingests = await trio.to_thread.run_sync(gc.prune_ingests, engine.store, ingest_age)
    await engine.snapshots.cleanup()
    return Collected(tuple(removed), len(deleted), sum(i.size for i in deleted), len(ingests))


__all__ = ["DEFAULT_INGEST_AGE", "Collected", "collect_garbage", "image_roots",
           "leased_content"]
