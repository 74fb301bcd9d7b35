"""A root of the previous layout (four LMDB environments) opens as one ``metadata.lmdb``.

The old roots are written here with ``lmdb.open`` exactly as the old stores laid them out
(snapfs.snapshot.metastore, snapfs.lazy.layerdb, snapfs.app.images and content.index before
the one-environment layout), then opened with today's stores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

import content.legacy_metadata
import content.metadata
from content.descriptor import Descriptor
from content.digest import digest_bytes
from content.errors import FailedPrecondition
from content.metadata import DATABASES, MetadataDB
from content.store import ContentStore
from snapfs.app.images import ImageRecord, ImageStore
from snapfs.lazy.layerdb import LayerDB, LayerRecord, LocalRecord
from snapfs.snapshot.metastore import MetaStore
from snapfs.snapshot.mounts import OverlayFeatures
from snapfs.snapshot.snapshotter import Snapshotter
from snapfs.snapshot.types import Kind

REPO = Path(__file__).resolve().parents[2]
BLOB = b"a config blob"
BLOB_DIGEST = digest_bytes(BLOB)
LAYER = digest_bytes(b"a lazy layer")
TOC = digest_bytes(b"its toc")
CHAIN = digest_bytes(b"a chain id")
RANGES = {0: b"footer tail", 4096: b"toc bytes"}
IMAGE = ImageRecord("127.0.0.1:5000/app:1",
                    Descriptor("application/vnd.oci.image.manifest.v1+json",
                               digest_bytes(b"manifest"), 8),
                    BLOB_DIGEST, (CHAIN,), True, 1.5, 2.5)
OLD = ("meta.lmdb", "layers.lmdb", "images.lmdb", "content/meta.lmdb")


def _put(path: Path, rows: dict[bytes, bytes], db: bytes | None, *, subdir: bool = True,
         max_dbs: int = 16) -> None:
    env = lmdb.open(str(path), subdir=subdir, max_dbs=max_dbs, map_size=1 << 26)
    handle = env.open_db(db) if db else None
    with env.begin(write=True, db=handle) as txn:
        for key, value in rows.items():
            txn.put(key, value)
    env.close()


def _snap(id: int, kind: Kind, parent: str, labels: dict[str, str], size: int) -> bytes:
    return json.dumps({"id": id, "kind": int(kind), "parent": parent, "labels": labels,
                       "created": 1_000 * id, "updated": 2_000 * id, "size": size,
                       "inodes": id, "lower": "/lazy/dir" if parent else None},
                      sort_keys=True).encode()


def write_old_root(root: Path, *, next_id: int = 2) -> None:
    """The four environments of a root written by the previous layout."""
    root.mkdir(parents=True, exist_ok=True)
    _put(root / "meta.lmdb", {
        b"v1/schema": b'{"version": 1}',
        b"v1/next-id": json.dumps({"id": next_id}).encode(),
        b"v1/snap/base": _snap(1, Kind.COMMITTED, "", {"a": "1"}, 10),
        b"v1/snap/lazy": _snap(2, Kind.COMMITTED, "base", {"containerd.io/snapshot.ref": "x"},
                               0),
        b"v1/children/0000000000000001/lazy": b"{}",
    }, b"snapshots")
    layer = json.dumps({"ref": "127.0.0.1:5000/app:1", "size": 123, "format": "estargz",
                        "toc_digest": str(TOC), "created": 7}, sort_keys=True).encode()
    _put(root / "layers.lmdb", {
        b"v1/schema": b'{"version": 1}',
        f"v1/layer/{LAYER}".encode(): layer,
        **{f"v1/range/{LAYER}/{off:016x}".encode(): data for off, data in RANGES.items()},
        f"v1/local/{LAYER}".encode(): b'{"bytes": 99, "created": 8, "dir": "L1"}',
    }, b"layers", max_dbs=2)
    _put(root / "images.lmdb",
         {b"v1/image/" + IMAGE.name.encode(): json.dumps(IMAGE.to_json()).encode()},
         None, max_dbs=1)
    blobs = root / "content" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / BLOB_DIGEST.hex).write_bytes(BLOB)
    row = {"size": len(BLOB), "mediatype": "m", "labels": {"l": "v"}, "created": 3.0,
           "updated": 4.0}
    _put(root / "content" / "meta.lmdb", {
        b"content/version": b"1",
        b"content/v1/blob/" + str(BLOB_DIGEST).encode():
            json.dumps(row, sort_keys=True, separators=(",", ":")).encode(),
    }, None, subdir=False, max_dbs=0)
    (root / "content" / "ingest").mkdir()


def dump(root: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every record of metadata.lmdb (the migration markers' times left out)."""
    env = lmdb.open(str(root / "metadata.lmdb"), max_dbs=16, readonly=True, lock=False)
    out = {}
    with env.begin() as txn:
        for name in DATABASES:
            db = env.open_db(name, txn=txn, create=False)
            out[name.decode()] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)
                                  if not bytes(k).startswith(b"migrated/")]
    env.close()
    return out


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if "metadata.lmdb" not in p.parts)


def assert_all_there(root: Path) -> None:
    with MetadataDB.open(root) as md:
        store = MetaStore(md)
        snaps = store.with_transaction(False, lambda tx: {r.key: r for r in tx.walk()})
        assert sorted(snaps) == ["base", "lazy"]
        assert (snaps["base"].kind, dict(snaps["base"].labels), snaps["base"].size) == (
            Kind.COMMITTED, {"a": "1"}, 10)
        assert (snaps["lazy"].parent, snaps["lazy"].lower) == ("base", "/lazy/dir")
        assert store.with_transaction(False, lambda tx: tx.has_children(snaps["base"]))

        layers = LayerDB(md)
        assert layers.get(LAYER) == LayerRecord(LAYER, "127.0.0.1:5000/app:1", 123, "estargz",
                                                TOC, 7)
        assert layers.ranges(LAYER) == RANGES
        assert layers.local(LAYER) == LocalRecord(LAYER, "L1", 99, 8)

        assert ImageStore(metadata=md).get(IMAGE.name) == IMAGE
        with ContentStore(root / "content", metadata=md) as blobs:
            info = blobs.info(BLOB_DIGEST)
            assert (info.size, info.media_type, dict(info.labels)) == (len(BLOB), "m",
                                                                       {"l": "v"})
            assert blobs.read(BLOB_DIGEST) == BLOB


@pytest.fixture
def old_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_old_root(root)
    return root


def test_an_old_root_is_migrated_on_first_open(old_root: Path) -> None:
    with MetadataDB.open(old_root) as md:
        assert sorted(md.migrated) == sorted(OLD)
    assert_all_there(old_root)
    # The old environments are set aside, not deleted.
    for old in OLD:
        assert not (old_root / old).exists()
        assert (old_root / f"{old}.migrated-v1").exists()
    assert not (old_root / "content" / "meta.lmdb-lock").exists()
    # A new snapshot gets the next id the old metastore would have given.
    store = MetaStore.open(old_root)
    rec = store.with_transaction(True, lambda tx: tx.create("new", Kind.ACTIVE, "base"))
    store.close()
    assert rec.id == 3


def test_a_migrated_root_opens_again_unchanged(old_root: Path) -> None:
    MetadataDB.open(old_root).close()
    before, listing = dump(old_root), files(old_root)
    with MetadataDB.open(old_root) as md:
        assert md.migrated == ()
    assert_all_there(old_root)
    assert dump(old_root) == before and files(old_root) == listing


async def test_the_snapshotter_opens_an_old_root(old_root: Path) -> None:
    sn = Snapshotter.open(old_root, features=OverlayFeatures())
    try:
        names = sorted(i.name for i in await sn.list())
    finally:
        sn.close()
    assert names == ["base", "lazy"]
    assert_all_there(old_root)


@pytest.mark.parametrize("when", ["before the commit", "after one rename"])
def test_a_crash_mid_migration_reruns_it_and_loses_nothing(
        old_root: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    class Crash(Exception):
        pass

    if when == "before the commit":
        real_copy = content.metadata._copy
        calls: list[str] = []

        def copy(txn: content.metadata.Txn, root: Path, old: content.legacy_metadata.Legacy) -> int:
            calls.append(old.rel)
            if len(calls) == 3:
                raise Crash
            return real_copy(txn, root, old)

        monkeypatch.setattr(content.metadata, "_copy", copy)
    else:
        real_aside = content.legacy_metadata.Legacy.set_aside
        renamed: list[str] = []

        def set_aside(self: content.legacy_metadata.Legacy, root: Path, aside: str) -> None:
            if renamed:
                raise Crash
            renamed.append(self.rel)
            real_aside(self, root, aside)

        monkeypatch.setattr(content.legacy_metadata.Legacy, "set_aside", set_aside)
    with pytest.raises(Crash):
        MetadataDB.open(old_root)
    monkeypatch.undo()
    left = [old for old in OLD if (old_root / old).exists()]
    assert len(left) == (4 if when == "before the commit" else 3)
    with MetadataDB.open(old_root) as md:
        assert sorted(md.migrated) == sorted(left)
    assert_all_there(old_root)
    assert not any((old_root / f"{old}.migrated-v1.2").exists() for old in OLD)
    assert all((old_root / f"{old}.migrated-v1").exists() for old in OLD)


OPEN_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from content.metadata import MetadataDB
    root, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    md = MetadataDB.open(root)
    counts = md.read(lambda t: [len(list(t.scan(db))) for db in
                                (b"content", b"images", b"snapshots", b"layers")])
    print(json.dumps({"migrated": sorted(md.migrated), "counts": counts}))
""")


def test_two_processes_opening_an_old_root_at_once_migrate_it_once(
        old_root: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_SCRIPT, str(old_root), str(go)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)  # both started and waiting
    go.touch()
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["migrated"] for r in results) == [[], sorted(OLD)]
    # Each saw every record: content (version + 1 row), 1 image, 5 snapshot keys, 5 layer keys.
    assert [r["counts"] for r in results] == [[2, 1, 5, 5]] * 2
    assert not any((old_root / f"{old}.migrated-v1.2").exists() for old in OLD)
    assert_all_there(old_root)


HOLD_SCRIPT = textwrap.dedent("""
    import sys, lmdb
    env = lmdb.open(sys.argv[1], max_dbs=2)
    print("open", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def old_daemon(old_root: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process (an older snapfs) with the old layers.lmdb open."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(old_root / "layers.lmdb")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "open\n"
    yield proc
    proc.communicate(timeout=30)


def test_an_old_environment_open_elsewhere_is_refused_until_it_closes(
        old_root: Path, old_daemon: subprocess.Popen[str]) -> None:
    with pytest.raises(FailedPrecondition) as info:
        MetadataDB.open(old_root)
    message = str(info.value)
    assert "layers.lmdb" in message and "open in another process" in message
    assert "stop it" in message and "\n" not in message
    assert all((old_root / old).exists() for old in OLD)  # nothing moved
    old_daemon.communicate(timeout=30)
    assert_all_there(old_root)


def test_an_old_environment_that_disagrees_is_refused(old_root: Path) -> None:
    MetadataDB.open(old_root).close()
    before = dump(old_root)
    # An older snapfs ran on the migrated root: it started a fresh meta.lmdb.
    _put(old_root / "meta.lmdb", {b"v1/schema": b'{"version": 1}',
                                  b"v1/next-id": b'{"id": 1}'}, b"snapshots")
    with pytest.raises(FailedPrecondition, match=r"meta\.lmdb .* disagrees .* move") as info:
        MetadataDB.open(old_root)
    assert "\n" not in str(info.value)
    assert (old_root / "meta.lmdb").exists() and dump(old_root) == before
    (old_root / "meta.lmdb").rename(old_root / "from-the-older-snapfs")  # what it advises
    assert_all_there(old_root)


def test_a_standalone_content_store_of_the_old_layout_is_migrated(tmp_path: Path) -> None:
    root = tmp_path / "content"
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "blobs" / "sha256" / BLOB_DIGEST.hex).write_bytes(BLOB)
    _put(root / "meta.lmdb", {
        b"content/version": b"1",
        b"content/v1/blob/" + str(BLOB_DIGEST).encode():
            b'{"created":1.0,"labels":{},"mediatype":"","size":13,"updated":1.0}',
    }, None, subdir=False, max_dbs=0)
    with ContentStore(root) as store:
        assert store.read(BLOB_DIGEST) == BLOB
        assert [i.digest for i in store.list()] == [BLOB_DIGEST]
    assert (root / "meta.lmdb.migrated-v1").is_file()
