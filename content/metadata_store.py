"""What every store kept in ``<root>/metadata.lmdb`` does alike: check its own schema record
when it is built, and open a handle of its own when it is not given one.

The content index (``content.index``), the snapshot records (``snapfs.snapshot.metastore``)
and the lazy-layer records (``snapfs.lazy.layerdb``) each live in their own database of the
one environment (``content.metadata``). Must not know any store's keys but the schema key it
is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from content.metadata import MetadataDB, Txn


class OwnsHandle(Protocol):
    _owns: bool  # whether closing the store closes its MetadataDB handle


S = TypeVar("S", bound=OwnsHandle)


def open_owning(build: Callable[[MetadataDB], S], root: Path) -> S:
    """``build`` on a handle of its own on ``root``'s environment, closed with the store (and
    at once if ``build`` fails)."""
    metadata = MetadataDB.open(root)
    try:
        store = build(metadata)
    except BaseException:
        metadata.close()
        raise
    store._owns = True
    return store


def ensure_schema(metadata: MetadataDB, db: bytes, key: bytes, version: bytes,
                  refuse: Callable[[bytes], Exception]) -> None:
    """Write ``version`` under ``key`` of ``db`` if absent; raise ``refuse(found)`` if another
    version is there (a root written by a snapfs whose records this one does not read)."""

    def check(txn: Txn) -> None:
        raw = txn.get(db, key)
        if raw is None:
            txn.put(db, key, version)
        elif raw != version:
            raise refuse(raw)

    metadata.write(check)


__all__ = ["OwnsHandle", "ensure_schema", "open_owning"]
