"""A snapshot record and its lazy-layer record commit in one transaction, or neither does."""

from __future__ import annotations

from pathlib import Path

import pytest

from content.digest import digest_bytes
from content.errors import FailedPrecondition
from content.metadata import MetadataDB
from snapfs.lazy.layerdb import LayerDB, LayerRecord, LocalRecord
from snapfs.snapshot.metastore import MetaStore, Transaction
from snapfs.snapshot.mounts import OverlayFeatures
from snapfs.snapshot.snapshotter import Snapshotter
from snapfs.snapshot.types import Kind

LAYER = LayerRecord(digest_bytes(b"layer"), "127.0.0.1:5000/app:1", 10, "estargz",
                    digest_bytes(b"toc"), 1)


class Crash(Exception):
    pass


def test_a_snapshot_and_its_layer_commit_together_or_not_at_all(tmp_path: Path) -> None:
    with MetadataDB.open(tmp_path) as md:
        store, layers = MetaStore(md), LayerDB(md)

        def prepare(tx: Transaction, crash: bool) -> None:
            tx.create("lazy", Kind.COMMITTED, lower="/fuse/L1")
            layers.put(LAYER, {0: b"toc"}, txn=tx.txn)
            layers.set_local(LocalRecord(LAYER.digest, "L1", 5, 2), txn=tx.txn)
            assert layers.get(LAYER.digest, txn=tx.txn) == LAYER  # sees its own writes
            if crash:
                raise Crash

        with pytest.raises(Crash):
            store.with_transaction(True, lambda tx: prepare(tx, crash=True))
        assert store.with_transaction(False, lambda tx: tx.find("lazy")) is None
        assert layers.get(LAYER.digest) is None and layers.ranges(LAYER.digest) == {}

        store.with_transaction(True, lambda tx: prepare(tx, crash=False))
        assert store.with_transaction(False, lambda tx: tx.get("lazy")).lower == "/fuse/L1"
        assert layers.get(LAYER.digest) == LAYER and layers.ranges(LAYER.digest) == {0: b"toc"}

        def remove(tx: Transaction) -> None:
            tx.remove("lazy")
            assert layers.remove(LAYER.digest, txn=tx.txn)
            raise Crash

        with pytest.raises(Crash):
            store.with_transaction(True, remove)
        assert layers.local(LAYER.digest) == LocalRecord(LAYER.digest, "L1", 5, 2)


def test_the_snapshotters_transaction_spans_a_layer_db_opened_on_the_same_root(
        tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path, features=OverlayFeatures())
    layers = LayerDB.open(tmp_path)  # another handle, the same environment
    try:
        def body(tx: Transaction) -> None:
            tx.create("lazy", Kind.COMMITTED, lower="/fuse/L1")
            layers.put(LAYER, {}, txn=tx.txn)
            raise Crash

        with pytest.raises(Crash):
            sn._tx(True, body)
        assert layers.get(LAYER.digest) is None
        # Forgetting txn= inside a write body is refused rather than waiting for itself.
        with pytest.raises(FailedPrecondition, match="pass it on"):
            sn._tx(True, lambda tx: layers.put(LAYER, {}))
        assert layers.metadata.path == sn.metadata.path == tmp_path / "metadata.lmdb"
    finally:
        layers.close()
        sn.close()
