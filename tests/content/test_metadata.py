"""The root's one LMDB environment: schema version, transactions, sharing within a process."""

from __future__ import annotations

import json
from pathlib import Path

import lmdb
import pytest

from content.errors import FailedPrecondition, InvalidArgument
from content.metadata import (
    CONTENT_DB,
    DATABASES,
    IMAGES_DB,
    LAYERS_DB,
    SCHEMA_DB,
    MetadataDB,
    Txn,
)


def test_one_environment_with_every_database_and_a_schema_record(tmp_path: Path) -> None:
    with MetadataDB.open(tmp_path) as md:
        md.write(lambda txn: txn.put(IMAGES_DB, b"k", b"v"))
        assert md.path == tmp_path / "metadata.lmdb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.lmdb"]
    env = lmdb.open(str(tmp_path / "metadata.lmdb"), max_dbs=16, readonly=True)
    with env.begin() as txn:
        names = sorted(bytes(k) for k, _ in txn.cursor())
        schema = txn.get(b"version", db=env.open_db(SCHEMA_DB, txn=txn, create=False))
        image = txn.get(b"k", db=env.open_db(IMAGES_DB, txn=txn, create=False))
    env.close()
    assert names == sorted(DATABASES)
    assert json.loads(schema) == {"version": 1} and image == b"v"


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    MetadataDB.open(tmp_path).close()
    env = lmdb.open(str(tmp_path / "metadata.lmdb"), max_dbs=16)
    with env.begin(write=True, db=env.open_db(SCHEMA_DB)) as txn:
        txn.put(b"version", b'{"version": 2}')
    env.close()
    with pytest.raises(FailedPrecondition, match="schema version 2 is not 1"):
        MetadataDB.open(tmp_path)


def test_a_failed_body_aborts_and_a_good_one_commits(tmp_path: Path) -> None:
    with MetadataDB.open(tmp_path) as md:
        def half(txn: Txn) -> None:
            txn.put(CONTENT_DB, b"a", b"1")
            raise RuntimeError("crash mid-operation")

        with pytest.raises(RuntimeError):
            md.write(half)
        assert md.read(lambda txn: txn.get(CONTENT_DB, b"a")) is None
        md.write(lambda txn: txn.put(CONTENT_DB, b"a", b"1"))
        assert md.read(lambda txn: list(txn.scan(CONTENT_DB))) == [(b"a", b"1")]
        with pytest.raises(FailedPrecondition, match="write in a read transaction"):
            md.read(lambda txn: txn.put(CONTENT_DB, b"b", b"2"))


def test_stores_join_an_open_transaction_instead_of_deadlocking(tmp_path: Path) -> None:
    with MetadataDB.open(tmp_path) as md, MetadataDB.open(tmp_path) as other_handle:
        def both(txn: Txn) -> None:
            txn.put(CONTENT_DB, b"blob", b"1")
            other_handle.write(lambda t: t.put(LAYERS_DB, b"layer", b"2"), txn=txn)
            raise RuntimeError("abort both")

        with pytest.raises(RuntimeError):
            md.write(both)
        assert md.read(lambda t: (t.get(CONTENT_DB, b"blob"), t.get(LAYERS_DB, b"layer"))) == (
            None, None)
        # A second write transaction in the thread that holds one would wait for itself.
        with pytest.raises(FailedPrecondition, match=r"already open in this thread.*txn="):
            md.write(lambda txn: other_handle.write(lambda t: None))
        with pytest.raises(FailedPrecondition, match="needs a write transaction"):
            md.read(lambda txn: md.write(lambda t: None, txn=txn))
        kept: list[Txn] = []
        md.read(kept.append)
        with pytest.raises(FailedPrecondition, match="after it ended"):
            md.read(lambda t: None, txn=kept[0])


def test_a_transaction_of_another_root_is_refused(tmp_path: Path) -> None:
    with MetadataDB.open(tmp_path / "a") as a, MetadataDB.open(tmp_path / "b") as b, \
            pytest.raises(InvalidArgument, match="another environment"):
        a.write(lambda txn: b.write(lambda t: None, txn=txn))


def test_bodies_must_be_plain_functions(tmp_path: Path) -> None:
    async def body(txn: Txn) -> None:
        txn.put(CONTENT_DB, b"a", b"1")

    with MetadataDB.open(tmp_path) as md:
        with pytest.raises(TypeError, match="plain def"):
            md.write(body)
        assert md.read(lambda txn: txn.get(CONTENT_DB, b"a")) is None


def test_handles_on_one_root_share_one_environment_until_the_last_closes(
        tmp_path: Path) -> None:
    a = MetadataDB.open(tmp_path)
    b = MetadataDB.open(tmp_path)
    a.write(lambda txn: txn.put(CONTENT_DB, b"k", b"v"))
    a.close()
    a.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="closed"):
        a.read(lambda txn: None)
    assert b.read(lambda txn: txn.get(CONTENT_DB, b"k")) == b"v"
    b.close()
    with MetadataDB.open(tmp_path) as c:
        assert c.read(lambda txn: txn.get(CONTENT_DB, b"k")) == b"v"


def test_an_environment_path_is_not_a_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"open the root that holds metadata\.lmdb"):
        MetadataDB.open(tmp_path / "layers.lmdb")
