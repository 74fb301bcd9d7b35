"""Image documents: digests that agree with the bytes, configs and manifests that parse
back, media types per format, compression detection, and clear errors on bad JSON."""

from __future__ import annotations

import io
import json
import struct

import pytest

from content import mediatypes as mt
from content.compression import (
    Compression,
    compress,
    compression_for_media_type,
    decompress,
    detect,
    open_decompressed,
)
from content.descriptor import Platform
from content.digest import digest_bytes
from content.errors import InvalidArgument
from content.image import (
    make_image,
    make_index,
    make_layer,
    parse_config,
    parse_index,
    parse_manifest,
)
from content.tarlayer import Entry, build_tar

TAR = build_tar([Entry("hello", data=b"world\n")])
TAR2 = build_tar([Entry("second", data=b"2")])


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_digests_and_detection(compression: str) -> None:
    layer = make_layer(TAR, compression)  # type: ignore[arg-type]
    assert layer.diff_id == digest_bytes(TAR)
    assert layer.digest == digest_bytes(layer.blob)
    assert detect(layer.blob[:4]) is Compression(compression)
    assert compression_for_media_type(layer.media_type) is Compression(compression)
    assert decompress(layer.blob) == TAR
    assert make_layer(TAR, compression).blob == layer.blob  # type: ignore[arg-type]


def test_multi_member_gzip_and_multi_frame_zstd_decompress_whole() -> None:
    gz = compress(b"a" * 5000, "gzip") + compress(b"b" * 7, "gzip") + compress(b"", "gzip")
    assert decompress(gz) == b"a" * 5000 + b"b" * 7
    skippable = struct.pack("<II", 0x184D2A50, 3) + b"toc"
    zs = compress(b"x" * 10, "zstd") + skippable + compress(b"y" * 10, "zstd")
    assert decompress(zs) == b"x" * 10 + b"y" * 10
    assert detect(skippable) is Compression.ZSTD


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_stream_is_an_error(compression: str) -> None:
    blob = compress(bytes(range(256)) * 4000, compression)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=f"{compression} stream truncated"):
        decompress(blob[: len(blob) // 2])


def test_corrupt_gzip_is_an_error() -> None:
    blob = bytearray(compress(bytes(range(256)) * 100, "gzip"))
    blob[20:40] = b"\xff" * 20
    with pytest.raises(InvalidArgument, match="gzip stream corrupt"):
        decompress(bytes(blob))


def test_open_decompressed_streams_in_small_reads() -> None:
    data = bytes(range(256)) * 10000
    kind, reader = open_decompressed(io.BytesIO(compress(data, "gzip")))
    assert kind is Compression.GZIP
    out = bytearray()
    while chunk := reader.read(777):
        out += chunk
    assert bytes(out) == data


def test_make_image_documents_are_consistent() -> None:
    layers = [make_layer(TAR, "gzip"), make_layer(TAR2, "zstd")]
    cfg = {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo hi"], "Env": ["A=1"],
           "WorkingDir": "/w", "User": "1000:1000"}
    image = make_image(layers, cfg, Platform("linux", "arm64", "v8"))
    assert image.digest == digest_bytes(image.manifest)
    assert image.descriptor.size == len(image.manifest)
    assert image.descriptor.platform == Platform("linux", "arm64", "v8")
    manifest = parse_manifest(image.manifest)
    assert manifest.media_type == mt.OCI_MANIFEST
    assert manifest.config.digest == digest_bytes(image.config)
    assert manifest.config.media_type == mt.OCI_CONFIG
    assert [d.digest for d in manifest.layers] == [ly.digest for ly in layers]
    assert [d.size for d in manifest.layers] == [len(ly.blob) for ly in layers]
    assert [d.media_type for d in manifest.layers] == [mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD]
    config = parse_config(image.config)
    assert config.diff_ids == (digest_bytes(TAR), digest_bytes(TAR2))
    assert config.platform == Platform("linux", "arm64", "v8")
    assert config.entrypoint == ("/bin/sh",) and config.cmd == ("-c", "echo hi")
    assert config.env == ("A=1",) and config.working_dir == "/w" and config.user == "1000:1000"
    assert len(json.loads(image.config)["history"]) == 2
    assert make_image(layers, cfg, Platform("linux", "arm64", "v8")).manifest == image.manifest


def test_docker_image_and_index() -> None:
    amd = make_image([make_layer(TAR)], {}, Platform("linux", "amd64"), oci=False)
    arm = make_image([make_layer(TAR)], {}, Platform("linux", "arm64", "v8"), oci=False)
    m = parse_manifest(amd.manifest, mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST and m.config.media_type == mt.DOCKER_CONFIG
    assert m.layers[0].media_type == mt.DOCKER_LAYER_GZIP
    index = parse_index(make_index([amd, arm], oci=False))
    assert index.media_type == mt.DOCKER_MANIFEST_LIST
    assert [d.digest for d in index.manifests] == [amd.digest, arm.digest]
    assert [d.platform for d in index.manifests] == [Platform("linux", "amd64"),
                                                    Platform("linux", "arm64", "v8")]
    assert parse_index(make_index([amd])).media_type == mt.OCI_INDEX


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schemaVersion":2,"layers":[]}', "'config'"),
        (b'{"schemaVersion":1,"config":{},"layers":[]}', "schemaVersion"),
        (b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % mt.OCI_INDEX.encode(),
         "is an index"),
        (b'{"schemaVersion":2,"config":{"mediaType":"x","size":1,"digest":"sha256:zz"},'
         b'"layers":[]}', "invalid digest"),
        (b'{"schemaVersion":2,"config":{"mediaType":"x","size":1,"digest":"sha256:'
         + b"a" * 64 + b'"},"layers":{}}', "'layers'"),
    ],
)
def test_parse_manifest_errors(doc: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_manifest(doc)


def test_parse_index_and_config_errors() -> None:
    with pytest.raises(InvalidArgument, match="'manifests'"):
        parse_index(b'{"schemaVersion":2}')
    with pytest.raises(InvalidArgument, match=r"rootfs\.diff_ids"):
        parse_config(b'{"os":"linux","architecture":"amd64"}')
    with pytest.raises(InvalidArgument, match="'architecture'"):
        parse_config(b'{"os":"linux","rootfs":{"diff_ids":[]}}')
    with pytest.raises(InvalidArgument, match="Cmd"):
        parse_config(b'{"os":"linux","architecture":"amd64","rootfs":{"diff_ids":[]},'
                     b'"config":{"Cmd":"sh"}}')
