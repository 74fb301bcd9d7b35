from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from content.digest import Digest, digest_bytes
from content.gc import collect, prune_ingests, unreferenced
from content.metadata import Txn
from content.store import ContentStore

ROOT = "containerd.io/gc.root"
REF = "containerd.io/gc.ref.content"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    with ContentStore(tmp_path / "content") as s:
        yield s


def put(store: ContentStore, name: str, **labels: str) -> Digest:
    return store.write_blob(name.encode(), labels=labels).digest


def image(store: ContentStore) -> dict[str, Digest]:
    """index (root) → manifest → config + two layers; plus unrelated blobs."""
    d = {
        "config": put(store, "config"),
        "layer0": put(store, "layer0"),
        "layer1": put(store, "layer1"),
        "orphan": put(store, "orphan"),
    }
    d["manifest"] = put(
        store,
        "manifest",
        **{
            f"{REF}.config": str(d["config"]),
            f"{REF}.l.0": str(d["layer0"]),
            f"{REF}.l.1": str(d["layer1"]),
        },
    )
    d["index"] = put(
        store, "index", **{ROOT: "2024-01-01T00:00:00Z", f"{REF}.m.0": str(d["manifest"])}
    )
    # Labels that look alike but are not content references, and a dangling reference.
    d["loner"] = put(
        store,
        "loner",
        **{
            f"{REF}x": str(d["orphan"]),
            f"{REF}.bad": "not-a-digest",
            f"{REF}.gone": str(digest_bytes(b"?")),
        },
    )
    return d


def test_unreferenced_follows_refs_from_roots(store: ContentStore) -> None:
    d = image(store)
    assert set(unreferenced(store)) == {d["orphan"], d["loner"]}
    assert set(unreferenced(store, extra_roots=[d["loner"]])) == {d["orphan"]}


def test_collect_deletes_only_garbage(store: ContentStore) -> None:
    d = image(store)
    assert {i.digest for i in collect(store, extra_roots=[d["orphan"]])} == {d["loner"]}
    assert [(i.digest, i.size) for i in collect(store)] == [(d["orphan"], len(b"orphan"))]
    assert collect(store) == []
    kept = {"index", "manifest", "config", "layer0", "layer1"}
    assert {i.digest for i in store.list()} == {d[k] for k in kept}
    for k in kept:
        assert store.read(d[k]) == k.encode()
    blob_files = {p.name for p in (store.root / "blobs").rglob("*") if p.is_file()}
    assert blob_files == {d[k].hex for k in kept}


def test_roots_read_in_the_delete_transaction_are_kept(store: ContentStore) -> None:
    d = image(store)
    seen: list[bool] = []

    def roots_in(txn: Txn) -> list[Digest]:
        seen.append(txn.write)
        return [d["orphan"]]

    assert {i.digest for i in collect(store, roots_in=roots_in)} == {d["loner"]}
    assert seen == [True]  # asked inside the (write) transaction that deletes


def test_removing_the_root_label_makes_the_image_garbage(store: ContentStore) -> None:
    d = image(store)
    store.update(d["index"], {}, [f"labels.{ROOT}"])
    assert len(collect(store)) == len(d)
    assert store.list() == []


def test_prune_ingests_by_age(store: ContentStore) -> None:
    w = store.open_ingest("old", digest_bytes(b"old data"))
    w.write(b"old")
    w.close()
    busy = store.open_ingest("busy", digest_bytes(b"busy data"))
    busy.write(b"bu")
    updated = {s.ref: s.updated_at for s in store.ingests()}
    later = max(updated.values()) + 100
    assert prune_ingests(store, max_age=1000, now=later) == []
    assert prune_ingests(store, max_age=10, now=later) == ["old"]
    assert [s.ref for s in store.ingests()] == ["busy"]
    busy.close()
    assert prune_ingests(store, max_age=10, now=later) == ["busy"]
    assert store.ingests() == []
