"""zstd:chunked specifics: both footer generations, annotations, and layers made by skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import trio

from content.digest import digest_bytes, parse_digest
from content.errors import InvalidArgument
from content.lazyformat import load_lazy_layer, parse_footer
from content.zstdchunked import (
    MAGIC_OLD,
    build_zstd_chunked,
    location_from_annotations,
    skippable_frame,
)
from tests.content.test_lazyformat import BIG, CHUNK, Blob, load, read_file, sample_tar
from tests.fixtures.realenv import need_binary


def built() -> tuple[bytes, dict[str, str]]:
    res = build_zstd_chunked(io.BytesIO(sample_tar()), chunk_size=CHUNK, level=3)
    assert res.blob is not None
    return res.blob, res.annotations


def test_footer_and_annotations_agree() -> None:
    blob, ann = built()
    loc = parse_footer(blob[-72:], len(blob), "L")
    assert loc is not None and loc.format == "zstd:chunked" and loc.footer_size == 72
    pos = ann["io.github.containers.zstd-chunked.manifest-position"]
    assert pos == f"{loc.toc_offset}:{loc.toc_length}:{loc.toc_uncompressed_length}:1"
    manifest = blob[loc.toc_offset:loc.toc_offset + loc.toc_length]
    assert ann["io.github.containers.zstd-chunked.manifest-checksum"] == str(
        digest_bytes(manifest))
    # the manifest sits in a skippable frame right before the offset
    assert struct.unpack_from("<II", blob, loc.toc_offset - 8) == (0x184D2A50, loc.toc_length)


async def test_old_40_byte_footer_is_read() -> None:
    blob, _ = built()
    loc = parse_footer(blob[-72:], len(blob))
    assert loc is not None
    old = struct.pack("<QQQQ", loc.toc_offset, loc.toc_length, loc.toc_uncompressed_length,
                      1) + MAGIC_OLD
    blob = blob[:-72] + skippable_frame(old)
    layer = await load(blob)
    assert layer.location.footer_size == 48
    assert read_file(layer, blob, "usr/lib/big.so") == BIG


def test_zstd_cli_decompresses_to_the_tar(tmp_path: Path) -> None:
    zstd = need_binary("zstd")
    blob, _ = built()
    raw = subprocess.run([zstd, "-dc"], input=blob, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        f = tf.extractfile("usr/lib/big.so")
        assert f is not None and f.read() == BIG


@pytest.mark.parametrize(("value", "cause"), [
    ("1:2:3", "is not offset:length"),
    ("a:b:c:d", "is not offset:length"),
    ("100:50:10:2", "manifest type 2"),
    ("100:5000:10:1", "outside the"),
    ("4:10:10:1", "outside the"),
])
def test_bad_position_annotation(value: str, cause: str) -> None:
    with pytest.raises(InvalidArgument, match=cause):
        location_from_annotations(
            {"io.containers.zstd-chunked.manifest-position": value}, 1000, "L")


async def test_footer_with_wrong_uncompressed_length_is_refused() -> None:
    blob, _ = built()
    loc = parse_footer(blob[-72:], len(blob))
    assert loc is not None
    lying = struct.pack("<QQQQQQQ", loc.toc_offset, loc.toc_length, 10, 1, 0, 0, 0) + b"GNUlInUx"
    with pytest.raises(InvalidArgument, match="manifest is 11 bytes, the footer says 10"):
        await load(blob[:-72] + skippable_frame(lying))


def _oci_layout(root: Path, layer_tar: bytes) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return {"digest": "sha256:" + h, "size": len(data)}

    layer = put(gzip.compress(layer_tar))
    config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [str(digest_bytes(layer_tar))]}}).encode())
    manifest = put(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }).encode())
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


async def test_reads_a_layer_converted_by_skopeo(tmp_path: Path) -> None:
    """skopeo (containers/image) writes zstd:chunked offline, oci: layout to oci: layout."""
    skopeo = need_binary("skopeo")
    _oci_layout(tmp_path / "src", sample_tar())
    await trio.run_process([skopeo, "--insecure-policy", "copy", "--quiet",
                            "--dest-compress-format", "zstd:chunked",
                            f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:latest"])
    blobs = tmp_path / "dst" / "blobs" / "sha256"
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    mdigest = parse_digest(index["manifests"][0]["digest"])
    manifest = json.loads((blobs / mdigest.hex).read_bytes())
    desc = manifest["layers"][0]
    assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    blob = (blobs / parse_digest(desc["digest"]).hex).read_bytes()
    ann = desc.get("annotations", {})
    assert any(k.endswith("zstd-chunked.manifest-checksum") for k in ann)

    for given in (ann, None):  # with the annotations, and from the footer alone
        reader = Blob(blob)
        layer = await load_lazy_layer(reader.read, len(blob), what="skopeo",
                                      annotations=given)
        assert layer is not None and layer.format == "zstd:chunked"
        assert read_file(layer, blob, "usr/lib/big.so") == BIG
        assert read_file(layer, blob, "etc/hostname") == b"snapfs\n"
        assert read_file(layer, blob, "usr/bin/tool2") == b"#!/bin/sh\necho hi\n"
        by_name = {e.name: e for e in layer.toc.entries if e.type != "chunk"}
        assert by_name["dev-null"].type == "char" and by_name["var/fifo"].type == "fifo"
        assert by_name["etc/attr"].xattrs["user.test"] == "v\u00e9".encode()
