"""The startup profile document (content.profiledoc), the local store and attribution
(snapfs.lazy.profilestore): what is accepted, what is refused and why; and which holes a
profile's prefetch bridges (snapfs.lazy.locality)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from content.digest import digest_bytes
from content.errors import InvalidArgument
from content.lazyformat import Chunk
from content.profiledoc import (
    ARTIFACT_TYPE,
    MAX_BYTES,
    PROFILE_MEDIA_TYPE,
    artifact_manifest,
    encode_document,
    make_profile,
    parse_document,
)
from snapfs.lazy.fetcher import FetchStats
from snapfs.lazy.locality import Locality
from snapfs.lazy.profilestore import ProfileStore, attribute

M = digest_bytes(b"manifest")
L0, L1 = digest_bytes(b"layer0"), digest_bytes(b"layer1")


def test_a_profile_round_trips_in_first_read_order_per_layer() -> None:
    p = make_profile(M, [(L1, "usr/bin/python3"), (L0, "etc/ld.so.cache"),
                         (L1, "usr/lib/libz.so"), (L1, "usr/bin/python3")],
                     image="r/app:1", seconds=10.0, created="2026-12-02T05:00:00Z")
    assert p.layers == (L1, L0)
    assert p.paths_of(L1) == ["usr/bin/python3", "usr/lib/libz.so"]
    assert p.by_layer() == [(L1, ["usr/bin/python3", "usr/lib/libz.so"]),
                            (L0, ["etc/ld.so.cache"])]
    again = parse_document(encode_document(p), "doc", subject=M)
    assert again == p


def _doc(**changes: object) -> bytes:
    doc: dict[str, object] = {"mediaType": PROFILE_MEDIA_TYPE, "manifest": str(M),
                              "layers": [str(L0)], "files": [[0, "bin/sh"]]}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("data", "cause"), [
    (b"\x00garbage", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (_doc(mediaType="application/json"), "media type"),
    (_doc(manifest=str(L1)), "recorded on manifest"),
    (_doc(files=[[1, "bin/sh"]]), "names layer 1 of 1"),
    (_doc(files=[[0, "../../etc/shadow"]]), "escapes"),
    (_doc(files=[[0, "bin/sh"], [0, "/bin/sh"]]), "listed twice"),
    (_doc(files=[[True, "bin/sh"]]), "malformed a file entry"),
    (_doc(layers=["sha256:nothex"]), "digest"),
    (_doc(layers=[str(L0), str(L0)]), "listed twice"),
    (_doc(files="bin/sh"), "must be lists"),
    (b" " * (MAX_BYTES + 1), "more than a profile may hold"),
])
def test_a_malformed_document_is_refused_naming_the_cause(data: bytes, cause: str) -> None:
    with pytest.raises(InvalidArgument, match=cause):
        parse_document(data, "blob x", subject=M)


def test_the_artifact_manifest_names_the_image_manifest_as_its_subject() -> None:
    blob = encode_document(make_profile(M, [(L0, "bin/sh")]))
    doc = json.loads(artifact_manifest("application/vnd.oci.image.manifest.v1+json", M, 123,
                                       blob))
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["subject"] == {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": str(M), "size": 123}
    assert doc["layers"] == [{"mediaType": PROFILE_MEDIA_TYPE,
                              "digest": str(digest_bytes(blob)), "size": len(blob)}]


def test_a_path_belongs_to_the_topmost_layer_that_holds_it() -> None:
    chain = [(L0, {"bin/sh", "etc/os"}), (L1, {"etc/os", "app/a"})]
    assert attribute(["etc/os", "bin/sh", "app/a", "nowhere"], chain) == [
        (L1, "etc/os"), (L0, "bin/sh"), (L1, "app/a")]


def test_the_store_keeps_one_profile_per_manifest(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    assert store.read(M) is None and store.manifests() == []
    p = make_profile(M, [(L0, "bin/sh")])
    dest = store.write(p)
    assert dest == tmp_path / "profiles" / "sha256" / f"{M.hex}.json"
    assert store.read(M) == p and store.exists(M) and store.manifests() == [M]
    assert [x.name for x in dest.parent.iterdir()] == [dest.name]  # no temp file left
    dest.write_bytes(b"{broken")
    assert store.read(M) is None  # unreadable: reported, treated as absent
    assert store.remove(M) and not store.remove(M)


def test_holes_up_to_the_bridge_between_wanted_chunks_are_fetched_along() -> None:
    # Ten chunks of 10 bytes, back to back in the blob; a profile wants 0, 2, 6 and 9.
    chunks = [Chunk(f"f{i}", 0, 10, 10 * i, 10, digest_bytes(b"%d" % i)) for i in range(10)]
    locality = Locality(chunks, FetchStats(), start=0)
    wanted = [chunks[6], chunks[0], chunks[2], chunks[9]]
    assert [c.path for c in locality.between(wanted, 20)] == ["f1", "f7", "f8"]
    assert [c.path for c in locality.between(wanted, 30)] == ["f1", "f3", "f4", "f5", "f7",
                                                              "f8"]
    assert locality.between(wanted, 0) == []
    assert locality.between(chunks[:3], 100) == []  # no holes: nothing to add
