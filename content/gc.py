"""Garbage collection of the content store, driven by containerd's GC labels.

- ``containerd.io/gc.root`` (any value) makes a blob a root.
- ``containerd.io/gc.ref.content`` or ``containerd.io/gc.ref.content.<anything>`` = ``<digest>``
  makes the labelled blob reference that digest (a manifest its config and layers, an
  index its manifests).

Everything not reachable from a root (or from ``extra_roots``, e.g. digests an in-flight
pull still needs, the role containerd gives leases) is garbage. The plan is a pure
function over the index rows; :func:`collect` runs it inside the store's delete
transaction so a blob committed meanwhile cannot be swept by a stale plan.

Must not touch snapshots or the registry: only the content store's blobs and labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from content.digest import Digest, parse_digest
from content.errors import FailedPrecondition, InvalidArgument, NotFound
from content.metadata import Txn
from content.store import BlobInfo, ContentStore

log = logging.getLogger(__name__)

GC_ROOT = "containerd.io/gc.root"
GC_REF_CONTENT = "containerd.io/gc.ref.content"


def references(labels: Mapping[str, str]) -> list[Digest]:
    """The digests a blob's labels reference; malformed values are ignored (and logged)."""
    refs: list[Digest] = []
    for key, value in labels.items():
        if key != GC_REF_CONTENT and not key.startswith(GC_REF_CONTENT + "."):
            continue
        try:
            refs.append(parse_digest(value))
        except InvalidArgument:
            log.warning("ignoring gc reference %s=%r: not a digest", key, value)
    return refs


def unreachable(infos: Sequence[BlobInfo], extra_roots: Iterable[Digest] = ()) -> list[Digest]:
    """Digests of ``infos`` not reachable from a root: mark from the roots, return the rest."""
    by_digest = {i.digest: i for i in infos}
    pending = [i.digest for i in infos if GC_ROOT in i.labels]
    pending.extend(extra_roots)
    marked: set[Digest] = set()
    while pending:
        digest = pending.pop()
        if digest in marked:
            continue
        marked.add(digest)
        info = by_digest.get(digest)
        if info is not None:
            pending.extend(references(info.labels))
    return sorted(d for d in by_digest if d not in marked)


def unreferenced(store: ContentStore, extra_roots: Iterable[Digest] = ()) -> list[Digest]:
    """Blobs :func:`collect` would delete now."""
    return unreachable(store.list(), extra_roots)


def collect(store: ContentStore, extra_roots: Iterable[Digest] = (), *,
            roots_in: Callable[[Txn], Iterable[Digest]] | None = None) -> list[BlobInfo]:
    """Delete every unreachable blob; return what was deleted. ``roots_in`` reads more
    roots inside the delete transaction (records of other stores, e.g. the image table, and
    in-flight leases), so that no root committed after the plan is missed."""
    roots = list(extra_roots)
    gone: dict[Digest, BlobInfo] = {}

    def select(infos: list[BlobInfo], txn: Txn) -> list[Digest]:
        more = list(roots_in(txn)) if roots_in is not None else []
        doomed = unreachable(infos, [*roots, *more])
        gone.update((i.digest, i) for i in infos if i.digest in set(doomed))
        return doomed

    deleted = [gone[d] for d in store.delete_where(select)]
    if deleted:
        log.info("content gc: deleted %d blobs", len(deleted))
    return deleted


def prune_ingests(store: ContentStore, max_age: float, now: float | None = None) -> list[str]:
    """Discard ingests not written to for more than ``max_age`` seconds; skip busy ones."""
    cutoff = (time.time() if now is None else now) - max_age
    pruned: list[str] = []
    for status in store.ingests():
        if status.updated_at >= cutoff:
            continue
        try:
            store.abort_ingest(status.ref)
        except (FailedPrecondition, NotFound):
            continue  # a writer holds it, or it finished meanwhile
        pruned.append(status.ref)
    return pruned
