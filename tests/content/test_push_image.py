"""Pushing built images to a real registry (distribution 2.8) and reading them back: the
registry serves exactly the bytes we built, indexes resolve to the host's platform, and a
pushed busybox layer applies into a working rootfs."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from content import mediatypes as mt
from content.descriptor import Platform, host_platform
from content.image import make_image, make_layer, parse_config, parse_manifest
from content.push import push_image, push_index
from content.reference import parse_reference
from content.registry import open_registry
from content.tarlayer import Entry, build_tar
from content.unpack import apply_layer
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer


async def test_push_image_then_fetch_back(registry: RegistryServer, repo_name: str,
                                          image_factory: ImageFactory,
                                          busybox_tree: Path, tmp_path: Path) -> None:
    extra = [Entry("app", "dir"), Entry("app/hello.txt", data=b"hello\n")]
    pushed = await image_factory.push(registry, repo_name, [busybox_tree, extra],
                                      config={"Cmd": ["/bin/cat", "/app/hello.txt"]},
                                      compression="zstd", tag="v1")
    async with open_registry() as reg:
        resolved = await reg.resolve(pushed.ref)
        assert resolved.descriptor.digest == pushed.image.digest
        assert resolved.manifest_bytes == pushed.image.manifest
        manifest = parse_manifest(resolved.manifest_bytes, resolved.descriptor.media_type)
        config = await reg.fetch_blob(pushed.ref, manifest.config)
        assert parse_config(config).cmd == ("/bin/cat", "/app/hello.txt")
        assert [d.media_type for d in manifest.layers] == [mt.OCI_LAYER_ZSTD] * 2
        dest = tmp_path / "rootfs"
        for desc, diff_id in zip(manifest.layers, parse_config(config).diff_ids, strict=True):
            blob = await reg.fetch_blob(pushed.ref, desc)
            apply_layer(io.BytesIO(blob), dest, expected_diff_id=diff_id)
    assert (dest / "app/hello.txt").read_bytes() == b"hello\n"
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert stat.S_IMODE(os.stat(dest / "bin/busybox").st_mode) == 0o755


async def test_push_index_resolves_host_platform(registry: RegistryServer,
                                                 repo_name: str) -> None:
    here = host_platform()
    other = Platform("linux", "s390x") if here.architecture != "s390x" else Platform(
        "linux", "amd64")
    images = [
        make_image([make_layer(build_tar([Entry("which", data=str(p).encode())]))], {}, p)
        for p in (other, here)
    ]
    ref = parse_reference(f"{registry.host}/{repo_name}:multi")
    async with open_registry() as reg:
        await push_index(reg, ref, images)
        resolved = await reg.resolve(ref)
        assert resolved.index is not None and resolved.index.media_type == mt.OCI_INDEX
        assert resolved.descriptor.digest == images[1].digest
        layer = parse_manifest(resolved.manifest_bytes).layers[0]
        assert layer.digest == images[1].layers[0].digest


async def test_push_docker_media_types(registry: RegistryServer, repo_name: str) -> None:
    image = make_image([make_layer(build_tar([Entry("f", data=b"x")]), oci=False)], {},
                       oci=False)
    ref = parse_reference(f"{registry.host}/{repo_name}:docker")
    async with open_registry() as reg:
        digest = await push_image(reg, ref, image)
        resolved = await reg.resolve(ref)
    assert digest == image.digest == resolved.descriptor.digest
    assert resolved.descriptor.media_type == mt.DOCKER_MANIFEST
    assert parse_manifest(resolved.manifest_bytes).layers[0].media_type == mt.DOCKER_LAYER_GZIP
