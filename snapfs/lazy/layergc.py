"""The lazy layers' side of the snapshotter's Cleanup and Usage (``CollectingRemoteLayers``
in ``snapfs.snapshot.remote``): records no snapshot names, disk nothing needs, and what one
layer holds locally.

containerd calls Cleanup after its GC removed snapshots; ``snapfs rmi`` and ``snapfs prune``
call it too. Inside Cleanup's transaction the records of layers no snapshot uses are dropped
(:meth:`LayerGC.forget_unreferenced`; ``forget_remote`` drops them one by one on Remove, this
catches any left behind); after it, those layers are released and :meth:`LayerGC.collect`
deletes the chunks and layer directories nothing needs (``snapfs.lazy.reclaim``). Must not
decide snapshot semantics: it is told which lowers the snapshots use.
"""

from __future__ import annotations

from pathlib import Path

from snapfs.fuse import LayerFS
from snapfs.lazy.layerdb import LayerDB
from snapfs.lazy.lifecycle import Lifecycle
from snapfs.lazy.reclaim import Reclaimed
from snapfs.lazy.source import layer_id
from snapfs.lazy.state import LayerTable
from snapfs.snapshot.metastore import Transaction
from snapfs.snapshot.types import Usage


class LayerGC:
    """Cleanup and Usage over one process's lazy layers."""

    def __init__(self, table: LayerTable, fs: LayerFS, db: LayerDB, lifecycle: Lifecycle) -> None:
        self._table = table
        self._mountpoint = fs.mountpoint
        self._db = db
        self._lifecycle = lifecycle

    def forget_unreferenced(self, tx: Transaction, lowers: set[str]) -> list[str]:
        """Inside Cleanup's transaction: drop the records of layers whose directory no
        snapshot's lower is; returns those directories (release them after the commit)."""
        stale = [r for r in self._db.all(txn=tx.txn)
                 if str(self._mountpoint / layer_id(r.digest)) not in lowers]
        for rec in stale:
            self._db.remove(rec.digest, txn=tx.txn)
        return [str(self._mountpoint / layer_id(r.digest)) for r in stale]

    async def collect(self) -> Reclaimed:
        """Delete the chunks and layer directories nothing needs."""
        return await self._lifecycle.collect()

    def local_usage(self, lower: str) -> Usage | None:
        """What the layer at ``lower`` holds on disk: all its bytes once materialised, else
        those of its cached chunks; None if it is not a layer of this process."""
        path = Path(lower)
        row = self._table.live(path.name) if path.parent == self._mountpoint else None
        if row is None:
            return None
        self._lifecycle.forget_evicted()
        if row.local_dir is not None or row.view is None:
            return Usage(size=row.total_bytes, inodes=0)
        return Usage(size=row.view.fetcher.local_bytes(), inodes=len(row.view.layer.files))


__all__ = ["LayerGC"]
