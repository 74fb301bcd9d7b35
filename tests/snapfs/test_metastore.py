"""The snapshot metastore: records, ids, the children index, persistence, transactions."""

from __future__ import annotations

import json
from pathlib import Path

import lmdb
import pytest

from snapfs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from snapfs.snapshot.metastore import DB_NAME, MetaStore, SnapshotRecord, Transaction
from snapfs.snapshot.types import Kind


@pytest.fixture
def store(tmp_path: Path) -> MetaStore:
    return MetaStore.open(tmp_path)


def test_ids_are_monotonic_and_survive_reopen(tmp_path: Path) -> None:
    s = MetaStore.open(tmp_path)
    a = s.with_transaction(True, lambda tx: tx.create("a", Kind.ACTIVE, "", {"k": "v"}))
    s.with_transaction(True, lambda tx: tx.remove("a"))
    b = s.with_transaction(True, lambda tx: tx.create("b", Kind.ACTIVE))
    assert b.id > a.id  # never reused, even after removal
    s.close()
    s.close()  # idempotent

    s2 = MetaStore.open(tmp_path)
    got = s2.with_transaction(False, lambda tx: tx.get("b"))
    assert got == b
    c = s2.with_transaction(True, lambda tx: tx.create("c", Kind.VIEW))
    assert c.id > b.id
    s2.close()


def test_values_are_json_under_versioned_keys(store: MetaStore) -> None:
    store.with_transaction(True, lambda tx: tx.create("x", Kind.ACTIVE, "", {"l": "1"}))
    path = store.path
    store.close()
    env = lmdb.open(str(path), max_dbs=16)
    db = env.open_db(DB_NAME)
    with env.begin(db=db) as txn:
        schema, snap = txn.get(b"v1/schema"), txn.get(b"v1/snap/x")
    env.close()
    assert schema is not None and snap is not None
    assert json.loads(bytes(schema)) == {"version": 1}
    raw = json.loads(bytes(snap))
    assert raw["kind"] == int(Kind.ACTIVE) and raw["labels"] == {"l": "1"}


def test_commit_renames_keeps_id_and_reindexes_children(store: MetaStore) -> None:
    def body(tx: Transaction) -> tuple[SnapshotRecord, SnapshotRecord]:
        base = tx.create("base-a", Kind.ACTIVE)
        committed = tx.commit_active("base-a", "base", {"c": "1"}, size=10, inodes=3)
        return base, committed

    active, committed = store.with_transaction(True, body)
    assert committed.id == active.id
    assert (committed.key, committed.kind, committed.size, committed.inodes) == (
        "base", Kind.COMMITTED, 10, 3,
    )
    assert dict(committed.labels) == {"c": "1"}
    with pytest.raises(NotFound, match="snapshot base-a not found"):
        store.with_transaction(False, lambda tx: tx.get("base-a"))

    store.with_transaction(True, lambda tx: tx.create("child-a", Kind.ACTIVE, "base"))
    store.with_transaction(True, lambda tx: tx.commit_active("child-a", "child", None, 0, 1))
    with pytest.raises(FailedPrecondition, match="has children"):
        store.with_transaction(True, lambda tx: tx.remove("base"))
    store.with_transaction(True, lambda tx: tx.remove("child"))
    store.with_transaction(True, lambda tx: tx.remove("base"))
    assert store.with_transaction(False, lambda tx: list(tx.walk())) == []


def test_errors(store: MetaStore) -> None:
    store.with_transaction(True, lambda tx: tx.create("a", Kind.ACTIVE))
    with pytest.raises(AlreadyExists):
        store.with_transaction(True, lambda tx: tx.create("a", Kind.VIEW))
    with pytest.raises(NotFound, match="parent snapshot nope not found"):
        store.with_transaction(True, lambda tx: tx.create("b", Kind.ACTIVE, "nope"))
    with pytest.raises(FailedPrecondition, match="not committed"):
        store.with_transaction(True, lambda tx: tx.create("b", Kind.ACTIVE, "a"))
    store.with_transaction(True, lambda tx: tx.create("v", Kind.VIEW))
    with pytest.raises(FailedPrecondition, match="not active"):
        store.with_transaction(True, lambda tx: tx.commit_active("v", "vc", None, 0, 0))
    with pytest.raises(InvalidArgument, match="maximum size"):
        store.with_transaction(True, lambda tx: tx.create("c", Kind.ACTIVE, "", {"k": "v" * 4096}))
    with pytest.raises(InvalidArgument):
        store.with_transaction(True, lambda tx: tx.create("k" * 1000, Kind.ACTIVE))


def test_failed_transaction_leaves_no_trace(store: MetaStore) -> None:
    def body(tx: Transaction) -> None:
        tx.create("half", Kind.ACTIVE)
        raise RuntimeError("simulated crash mid-operation")

    with pytest.raises(RuntimeError):
        store.with_transaction(True, body)
    assert store.with_transaction(False, lambda tx: tx.find("half")) is None


def test_update_labels_semantics(store: MetaStore) -> None:
    rec = store.with_transaction(True, lambda tx: tx.create("a", Kind.ACTIVE, "", {"x": "1"}))
    up = store.with_transaction(
        True, lambda tx: tx.update_labels("a", {"y": "2", "z": "3"}, ("labels.y", "labels.x"))
    )
    assert dict(up.labels) == {"y": "2"}  # x named but absent from the request: removed
    assert up.created_ns == rec.created_ns and up.updated_ns >= rec.updated_ns
    up = store.with_transaction(True, lambda tx: tx.update_labels("a", {"w": "4"}, ()))
    assert dict(up.labels) == {"w": "4"}
    with pytest.raises(InvalidArgument, match="'kind'"):
        store.with_transaction(True, lambda tx: tx.update_labels("a", {}, ("kind",)))


def test_closed_store_refuses(store: MetaStore) -> None:
    store.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.with_transaction(False, lambda tx: tx.find("a"))
