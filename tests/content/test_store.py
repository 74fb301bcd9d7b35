from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from content.digest import Digest, digest_bytes
from content.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from content.store import BlobInfo, ContentStore

DATA = bytes(range(256)) * 64  # 16 KiB
DGST = digest_bytes(DATA)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    with ContentStore(tmp_path / "content") as s:
        yield s


def blob_files(store: ContentStore) -> list[Path]:
    return sorted(p for p in (store.root / "blobs").rglob("*") if p.is_file())


def test_write_blob_then_read(store: ContentStore) -> None:
    info = store.write_blob(DATA, "application/octet-stream", {"a": "1"})
    assert (info.digest, info.size, info.media_type, dict(info.labels)) == (
        DGST,
        len(DATA),
        "application/octet-stream",
        {"a": "1"},
    )
    assert store.exists(DGST)
    assert store.info(DGST) == info
    assert store.read(DGST) == DATA
    assert store.read(DGST, 100, 10) == DATA[100:110]
    assert store.read(DGST, len(DATA) + 5) == b""
    path = store.blob_path(DGST)
    assert path == store.root / "blobs" / "sha256" / DGST.hex
    assert path.read_bytes() == DATA
    assert store.ingests() == []


def test_missing_blob_errors_name_the_digest(store: ContentStore) -> None:
    for call in (store.info, store.blob_path, store.read, store.delete):
        with pytest.raises(NotFound, match=DGST.hex):
            call(DGST)
    assert not store.exists(DGST)


def test_write_blob_with_wrong_expected_stores_nothing(store: ContentStore) -> None:
    wrong = digest_bytes(b"other")
    with pytest.raises(DigestMismatch) as err:
        store.write_blob(DATA, expected=wrong)
    assert err.value.expected == str(wrong) and err.value.actual == str(DGST)
    assert blob_files(store) == [] and store.list() == []


def test_commit_digest_mismatch_leaves_store_unchanged(store: ContentStore) -> None:
    kept = store.write_blob(b"kept")
    wrong = digest_bytes(b"what the registry promised")
    w = store.open_ingest("ref-1", wrong, len(DATA))
    w.write(DATA)
    with pytest.raises(DigestMismatch, match="ref-1") as err:
        w.commit()
    assert err.value.expected == str(wrong) and err.value.actual == str(DGST)
    assert blob_files(store) == [store.blob_path(kept.digest)]
    assert store.list() == [kept]
    assert store.ingests() == []
    assert store.read(kept.digest) == b"kept"


def test_truncated_blob_names_both_sizes_and_stays_resumable(store: ContentStore) -> None:
    w = store.open_ingest("short", DGST, len(DATA))
    w.write(DATA[:1000])
    with pytest.raises(FailedPrecondition, match=rf"expected {len(DATA)} bytes, got 1000"):
        w.commit()
    assert blob_files(store) == [] and store.list() == []
    # The prefix is valid: finishing the download commits the blob.
    w.write(DATA[1000:])
    assert w.commit().digest == DGST
    assert store.read(DGST) == DATA


def test_too_long_blob_is_rejected_and_discarded(store: ContentStore) -> None:
    kept = store.write_blob(b"kept")
    w = store.open_ingest("long", DGST, len(DATA))
    w.write(DATA)
    with pytest.raises(InvalidArgument, match=rf"expected {len(DATA)} bytes, got at least"):
        w.write(b"x")
    assert store.ingests() == []
    assert store.list() == [kept] and len(blob_files(store)) == 1
    with pytest.raises(FailedPrecondition, match="closed"):
        w.commit()


def test_resume_after_dropping_the_writer(store: ContentStore) -> None:
    half = len(DATA) // 2
    w = store.open_ingest("resume", DGST, len(DATA))
    w.write(DATA[:half])
    del w  # interrupted: no commit, no abort

    [status] = store.ingests()
    assert (status.ref, status.offset, status.expected, status.total) == (
        "resume",
        half,
        DGST,
        len(DATA),
    )
    w2 = store.open_ingest("resume", DGST, len(DATA))
    assert w2.offset == half
    w2.write(DATA[half:])
    assert w2.commit().digest == DGST
    assert store.read(DGST) == DATA
    assert store.ingests() == []


def test_resume_after_the_writing_process_died(store: ContentStore, tmp_path: Path) -> None:
    half = len(DATA) // 2
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from content.digest import parse_digest\n"
        "from content.store import BlobInfo, ContentStore\n"
        "s = ContentStore(Path(sys.argv[1]))\n"
        "w = s.open_ingest('crash', parse_digest(sys.argv[2]), int(sys.argv[3]))\n"
        "w.write(sys.stdin.buffer.read())\n"
        "os._exit(3)\n"
    )
    store.close()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(store.root), str(DGST), str(len(DATA))],
        input=DATA[:half],
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert proc.returncode == 3
    with ContentStore(store.root) as s:
        w = s.open_ingest("crash", DGST, len(DATA))
        assert w.offset == half
        w.write(DATA[half:])
        assert w.commit().digest == DGST
        assert s.read(DGST) == DATA


def test_reopening_with_another_expected_digest_starts_over(store: ContentStore) -> None:
    w = store.open_ingest("ref", digest_bytes(b"old"), 3)
    w.write(b"ol")
    w.close()
    w = store.open_ingest("ref", DGST, len(DATA))
    assert w.offset == 0
    w.write(DATA)
    assert w.commit().digest == DGST


def test_second_writer_of_a_ref_is_refused(store: ContentStore) -> None:
    w = store.open_ingest("busy", DGST)
    with pytest.raises(FailedPrecondition, match="ingest busy is locked"):
        store.open_ingest("busy", DGST)
    with pytest.raises(FailedPrecondition, match="locked"):
        store.abort_ingest("busy")
    w.close()
    store.open_ingest("busy", DGST).abort()
    assert store.ingests() == []
    with pytest.raises(NotFound, match="busy"):
        store.abort_ingest("busy")


def test_context_manager_aborts_on_error(store: ContentStore) -> None:
    with pytest.raises(RuntimeError), store.open_ingest("cm", DGST) as w:
        w.write(DATA[:10])
        raise RuntimeError("download failed")
    assert store.ingests() == []


def test_concurrent_writers_of_one_digest(store: ContentStore) -> None:
    writers = 6
    barrier = threading.Barrier(writers)
    results: list[object] = [None] * writers

    def write(n: int) -> None:
        try:
            w = store.open_ingest(f"ref-{n}", DGST, len(DATA))
            for i in range(0, len(DATA), 4096):
                w.write(DATA[i : i + 4096])
            barrier.wait()
            results[n] = w.commit(labels={"writer": str(n)})
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[0], BlobInfo) and results[0].digest == DGST
    assert all(r == results[0] for r in results), results
    assert len(store.list()) == 1 and len(blob_files(store)) == 1
    assert store.read(DGST) == DATA
    assert store.ingests() == []


def test_commit_of_an_existing_blob_returns_the_stored_info(store: ContentStore) -> None:
    first = store.write_blob(DATA, "first", {"k": "v"})
    w = store.open_ingest("late", DGST, len(DATA))
    w.write(DATA)
    assert w.commit("second", {"other": "x"}) == first
    assert store.write_blob(DATA, "third") == first
    assert store.list() == [first]


def test_update_semantics(store: ContentStore) -> None:
    store.write_blob(DATA, labels={"a": "1", "b": "2"})
    info = store.update(DGST, {"a": "9", "c": "3"}, ["labels.a"])
    assert dict(info.labels) == {"a": "9", "b": "2"}
    info = store.update(DGST, {}, ["labels.b"])  # missing value deletes
    assert dict(info.labels) == {"a": "9"}
    info = store.update(DGST, {"a": "", "z": "1"}, ["labels.a", "labels.z"])
    assert dict(info.labels) == {"z": "1"}
    info = store.update(DGST, {"x": "1", "y": ""})  # no fieldpaths: replace all
    assert dict(info.labels) == {"x": "1"}
    info = store.update(DGST, {"q": "1"}, ["labels"])
    assert dict(info.labels) == {"q": "1"}
    assert info.updated_at >= info.created_at
    with pytest.raises(InvalidArgument, match="mediatype"):
        store.update(DGST, {}, ["mediatype"])
    assert store.info(DGST) == info
    with pytest.raises(NotFound):
        store.update(digest_bytes(b"absent"), {"a": "1"})


def test_labels_longer_than_4096_bytes_are_refused(store: ContentStore) -> None:
    store.write_blob(b"ok", labels={"k": "v" * 4095})
    with pytest.raises(InvalidArgument, match="4096"):
        store.write_blob(DATA, labels={"k": "v" * 4096})
    assert not store.exists(DGST)
    with pytest.raises(InvalidArgument, match="4096"):
        store.update(digest_bytes(b"ok"), {"k": "é" * 2048})


def test_list_filters(store: ContentStore) -> None:
    a = store.write_blob(b"a", "application/vnd.oci.image.manifest.v1+json", {"kind": "m"})
    b = store.write_blob(b"bb", "application/vnd.oci.image.config.v1+json", {"kind": "c"})
    c = store.write_blob(b"ccc", "", {"containerd.io/gc.root": "now"})

    def digests(*filters: str) -> set[Digest]:
        return {i.digest for i in store.list(filters)}

    assert digests() == {a.digest, b.digest, c.digest}
    assert digests("labels.kind==m") == {a.digest}
    assert digests("labels.kind") == {a.digest, b.digest}
    assert digests('labels."containerd.io/gc.root"') == {c.digest}
    assert digests("labels.kind!=m") == {b.digest, c.digest}
    assert digests("labels.kind==m", "labels.kind==c") == {a.digest, b.digest}
    assert digests(f"digest=={b.digest}") == {b.digest}
    assert digests("size==3") == {c.digest}
    assert digests("mediatype~=config") == {b.digest}
    assert digests("labels.kind==m,size==2") == set()


def test_delete(store: ContentStore) -> None:
    store.write_blob(DATA)
    other = store.write_blob(b"other")
    store.delete(DGST)
    assert not store.exists(DGST)
    assert store.list() == [other]
    assert blob_files(store) == [store.blob_path(other.digest)]
    with pytest.raises(NotFound):
        store.read(DGST)
    with pytest.raises(NotFound):
        store.delete(DGST)
    assert store.write_blob(DATA).digest == DGST  # can be written again


def test_reopen_keeps_blobs_labels_and_ingests(tmp_path: Path) -> None:
    root = tmp_path / "content"
    with ContentStore(root) as s:
        info = s.write_blob(DATA, "m", {"a": "1"})
        w = s.open_ingest("partial", digest_bytes(b"partial data"), 12)
        w.write(b"partial")
        w.close()
    with ContentStore(root) as s:
        assert s.info(DGST) == info
        assert s.read(DGST) == DATA
        assert [(i.ref, i.offset) for i in s.ingests()] == [("partial", 7)]
    assert os.stat(root / "blobs" / "sha256" / DGST.hex).st_mode & 0o222 == 0


def test_recovers_from_a_crash_between_link_and_index_row(store: ContentStore) -> None:
    w = store.open_ingest("crashed", DGST, len(DATA))
    w.write(DATA)
    w.close()
    # What a commit leaves if the process dies right after linking into blobs/.
    data = next((store.root / "ingest").glob("*/data"))
    data.chmod(0o444)
    (store.root / "blobs" / "sha256").mkdir(exist_ok=True)
    os.link(data, store.root / "blobs" / "sha256" / DGST.hex)
    assert not store.exists(DGST)

    w = store.open_ingest("crashed", DGST, len(DATA))
    w.write(DATA)
    info = w.commit("recovered")
    assert info.media_type == "recovered" and store.exists(DGST)
    assert store.read(DGST) == DATA and store.ingests() == []
