from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest

from content.digest import digest_bytes
from content.errors import Internal, NotFound
from content.index import DB_NAME, BlobInfo, ContentIndex

A = BlobInfo(digest_bytes(b"a"), 1, "m", {"k": "v"}, 1.0, 1.0)
B = BlobInfo(digest_bytes(b"b"), 1, "", {}, 2.0, 2.0)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ContentIndex]:
    idx = ContentIndex.open(tmp_path)
    yield idx
    idx.close()


def test_put_get_all(index: ContentIndex) -> None:
    assert index.get(A.digest) is None and index.all() == []
    assert index.put_if_absent(A) == (A, True)
    assert index.put_if_absent(replace(A, media_type="other")) == (A, False)
    index.put_if_absent(B)
    assert index.get(A.digest) == A
    assert sorted(index.all(), key=lambda i: i.created_at) == [A, B]


def test_update_and_delete(index: ContentIndex) -> None:
    index.put_if_absent(A)
    updated = index.update(A.digest, lambda i: replace(i, labels={}, updated_at=5.0))
    assert index.get(A.digest) == updated == replace(A, labels={}, updated_at=5.0)
    with pytest.raises(NotFound, match=str(B.digest)):
        index.update(B.digest, lambda i: i)
    assert index.delete(A.digest) and not index.delete(A.digest)
    assert index.all() == []


def test_failed_update_changes_nothing(index: ContentIndex) -> None:
    index.put_if_absent(A)

    def boom(info: BlobInfo) -> BlobInfo:
        raise ValueError("no")

    with pytest.raises(ValueError):
        index.update(A.digest, boom)
    assert index.get(A.digest) == A


def test_sweep_deletes_what_select_picks(index: ContentIndex) -> None:
    index.put_if_absent(A)
    index.put_if_absent(B)
    seen: list[list[BlobInfo]] = []

    def select(rows: list[BlobInfo]) -> list[BlobInfo]:
        seen.append(rows)
        return [r for r in rows if r.media_type == "m"]

    assert index.sweep(lambda rows, _txn: [r.digest for r in select(rows)]) == [A.digest]
    assert len(seen[0]) == 2
    assert index.all() == [B]


def open_raw(tmp_path: Path) -> tuple[lmdb.Environment, object]:
    """The index's database in the root's environment, opened behind the index's back."""
    env = lmdb.open(str(tmp_path / "metadata.lmdb"), max_dbs=16)
    return env, env.open_db(DB_NAME)


def test_rows_persist_as_json_under_a_versioned_key(tmp_path: Path) -> None:
    idx = ContentIndex.open(tmp_path)
    idx.put_if_absent(A)
    idx.close()
    env, db = open_raw(tmp_path)
    with env.begin(db=db) as txn:
        assert txn.get(b"content/version") == b"1"
        raw = txn.get(b"content/v1/blob/" + str(A.digest).encode())
    env.close()
    assert raw is not None and raw.startswith(b"{")
    idx = ContentIndex.open(tmp_path)
    assert idx.get(A.digest) == A
    idx.close()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    env, db = open_raw(tmp_path)
    with env.begin(write=True, db=db) as txn:
        txn.put(b"content/version", b"99")
    env.close()
    with pytest.raises(Internal, match="schema version '99'"):
        ContentIndex.open(tmp_path)


def test_corrupt_row_is_an_internal_error(tmp_path: Path) -> None:
    ContentIndex.open(tmp_path).close()
    env, db = open_raw(tmp_path)
    with env.begin(write=True, db=db) as txn:
        txn.put(b"content/v1/blob/" + str(A.digest).encode(), b'{"size": 1}')
    env.close()
    idx = ContentIndex.open(tmp_path)
    with pytest.raises(Internal, match=f"{A.digest}.*corrupt"):
        idx.get(A.digest)
    idx.close()
