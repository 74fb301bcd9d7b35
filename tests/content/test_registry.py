"""The registry client against the real distribution registry (docker-registry 2.8)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from content.descriptor import Descriptor, Platform, host_platform
from content.digest import digest_bytes
from content.errors import DigestMismatch, InvalidArgument, NotFound
from content.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)
from content.reference import Reference, parse_reference
from content.registry import Registry, open_registry
from content.store import ContentStore
from tests.fixtures.registry import FaultProxy, RegistryServer


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def push_image(reg: Registry, ref: Reference, platform: Platform,
                     files: dict[str, bytes], *, docker: bool = False) -> tuple[Descriptor, bytes]:
    """Push config + one layer + manifest; returns the manifest descriptor and the layer."""
    layer = tar_bytes(files)
    config = dumps({"architecture": platform.architecture, "os": platform.os,
                    "rootfs": {"type": "layers", "diff_ids": [str(digest_bytes(layer))]},
                    "config": {"Cmd": ["/bin/sh"]}})
    await reg.push_blob(ref, config)
    await reg.push_blob(ref, layer)
    manifest = {"schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": str(digest_bytes(config)),
                           "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER,
                            "digest": str(digest_bytes(layer)), "size": len(layer)}]}
    data = dumps(manifest)
    media_type = str(manifest["mediaType"])
    digest = await reg.push_manifest(ref, data, media_type)
    return Descriptor(media_type, digest, len(data), platform=platform), layer


def ref_in(registry: RegistryServer | FaultProxy, repo: str, obj: str = "1.0") -> Reference:
    return parse_reference(f"{registry.host}/{repo}:{obj}")


async def test_push_and_resolve_single_platform(registry: RegistryServer, repo_name: str) -> None:
    async with open_registry() as reg:
        ref = ref_in(registry, repo_name)
        pushed, layer = await push_image(reg, ref, host_platform(), {"hello.txt": b"hi\n"})
        resolved = await reg.resolve(str(ref))
        assert resolved.descriptor.digest == pushed.digest
        assert resolved.descriptor.media_type == OCI_MANIFEST
        assert resolved.index is None
        assert digest_bytes(resolved.manifest_bytes) == pushed.digest
        layer_desc = Descriptor.from_json(resolved.manifest["layers"][0])
        assert await reg.fetch_blob(ref, layer_desc) == layer
        # the same manifest by digest is verified and identical
        desc, data = await reg.fetch_manifest(ref, str(pushed.digest))
        assert (desc.digest, data) == (pushed.digest, resolved.manifest_bytes)
        assert reg.stats.by_kind["manifest"] >= 2 and reg.stats.bytes_received > len(layer)


async def test_docker_media_types_resolve(registry: RegistryServer, repo_name: str) -> None:
    async with open_registry() as reg:
        ref = ref_in(registry, repo_name)
        pushed, _ = await push_image(reg, ref, host_platform(), {"a": b"a"}, docker=True)
        resolved = await reg.resolve(ref)
        assert resolved.descriptor.media_type == DOCKER_MANIFEST
        assert resolved.descriptor.digest == pushed.digest


@pytest.mark.parametrize("index_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
async def test_resolve_index_picks_the_host_platform(registry: RegistryServer, repo_name: str,
                                                     index_type: str) -> None:
    here = host_platform()
    other = Platform("linux", "s390x") if here.architecture != "s390x" else Platform(
        "linux", "amd64")
    async with open_registry() as reg:
        ref = ref_in(registry, repo_name, "multi")
        descs: list[Descriptor] = []
        for plat in (other, here, Platform("windows", here.architecture)):
            desc, _ = await push_image(reg, ref.with_object(f"only-{len(descs)}"), plat,
                                       {"platform": str(plat).encode()})
            descs.append(desc)
        index = dumps({"schemaVersion": 2, "mediaType": index_type,
                       "manifests": [d.to_json() for d in descs]})
        index_digest = await reg.push_manifest(ref, index, index_type)
        resolved = await reg.resolve(ref)
        assert resolved.index is not None and resolved.index.digest == index_digest
        assert resolved.descriptor.digest == descs[1].digest
        assert resolved.descriptor.platform == here
        chosen = await reg.resolve(ref, Platform(other.os, other.architecture))
        assert chosen.descriptor.digest == descs[0].digest
        with pytest.raises(NotFound, match="no manifest for platform linux/mips"):
            await reg.resolve(ref, Platform("linux", "mips"))


async def test_missing_manifest_names_host_repo_and_tag(registry: RegistryServer,
                                                        repo_name: str) -> None:
    async with open_registry() as reg:
        with pytest.raises(NotFound) as info:
            await reg.resolve(f"{registry.host}/{repo_name}:nope")
        assert str(info.value).startswith(
            f"registry {registry.host}: manifest {repo_name}:nope not found")


async def test_manifest_digest_is_verified(registry: RegistryServer, repo_name: str) -> None:
    async with open_registry() as reg:
        ref = ref_in(registry, repo_name)
        pushed, _ = await push_image(reg, ref, host_platform(), {"a": b"1"})
        # The registry stores manifests as blobs and parses them on the way out: damage the
        # stored bytes but keep them valid JSON.
        path = registry.blob_path(pushed.digest)
        path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
        with pytest.raises(DigestMismatch, match=str(pushed.digest)):
            await reg.fetch_manifest(ref, str(pushed.digest))
        # by tag, the bytes are checked against the digest the registry names
        with pytest.raises(DigestMismatch, match=str(pushed.digest)):
            await reg.resolve(ref)


@pytest.mark.parametrize("mode", ["flip", "truncate"])
async def test_corrupt_blob_is_refused_and_nothing_stored(
        registry: RegistryServer, repo_name: str, tmp_path: Path, mode: str) -> None:
    async with open_registry() as reg:
        ref = ref_in(registry, repo_name)
        data = os.urandom(200_000)
        digest = await reg.push_blob(ref, data)
        desc = Descriptor("application/octet-stream", digest, len(data))
        registry.corrupt_blob(digest, mode)
        error = DigestMismatch if mode == "flip" else InvalidArgument
        with pytest.raises(error):
            await reg.fetch_blob(ref, desc)
        with ContentStore(tmp_path / "store") as store:
            with pytest.raises(error):
                await reg.fetch_blob_into(store, ref, desc)
            assert not store.exists(digest)
            assert store.list() == []


async def test_fetch_into_store_and_resume_after_a_cut(
        registry: RegistryServer, repo_name: str, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, cut_after=300_000, cut_times=1)
    data = os.urandom(1_000_000)
    async with open_registry() as reg:
        digest = await reg.push_blob(ref_in(registry, repo_name), data)
    desc = Descriptor("application/octet-stream", digest, len(data))
    ref = ref_in(proxy, repo_name)
    async with open_registry(retries=0) as reg:
        with ContentStore(tmp_path / "store") as store:
            with pytest.raises(Exception, match="connection"):
                await reg.fetch_blob_into(store, ref, desc)
            assert not store.exists(digest)
            [partial] = store.ingests()
            assert partial.offset == 300_000
            info = await reg.fetch_blob_into(store, ref, desc)
            assert info.digest == digest and store.read(digest) == data
            assert store.ingests() == []
        # the second attempt asked only for the rest
        assert reg.stats.range_starts == [300_000]
        assert reg.stats.by_kind["blob"] == 1 and reg.stats.by_kind["range"] == 1


async def test_resume_within_one_call(registry: RegistryServer, repo_name: str,
                                      tmp_path: Path,
                                      fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, cut_after=100_000, cut_times=2)
    data = os.urandom(500_000)
    async with open_registry() as reg:
        digest = await reg.push_blob(ref_in(registry, repo_name), data)
        desc = Descriptor("application/octet-stream", digest, len(data))
        with ContentStore(tmp_path / "store") as store:
            await reg.fetch_blob_into(store, ref_in(proxy, repo_name), desc)
            assert store.read(digest) == data
        assert reg.stats.range_starts == [100_000, 200_000]
        assert await reg.fetch_blob(ref_in(proxy, repo_name), desc) == data


async def test_ranges_return_exactly_the_bytes(registry: RegistryServer, repo_name: str) -> None:
    data = os.urandom(100_000)
    async with open_registry() as reg:
        ref = ref_in(registry, repo_name)
        digest = await reg.push_blob(ref, data)
        assert await reg.fetch_range(ref, digest, 0, 10) == data[:10]
        assert await reg.fetch_range(ref, digest, 99_990, 10) == data[99_990:]
        assert await reg.fetch_range(ref, digest, 12_345, 1) == data[12_345:12_346]
        assert reg.stats.range_starts == [0, 99_990, 12_345]
        ranges = [(5, 100), (50_000, 7), (99_000, 1000), (10, 0)]
        before = reg.stats.requests
        got = await reg.fetch_ranges(ref, digest, ranges)
        assert got == [data[o : o + n] for o, n in ranges]
        assert reg.stats.requests == before + 1  # one multipart request
        async with reg.stream_blob(ref, digest, 99_000) as chunks:
            assert b"".join([c async for c in chunks]) == data[99_000:]
        with pytest.raises(InvalidArgument, match="416"):
            await reg.fetch_range(ref, digest, 200_000, 10)
        with pytest.raises(InvalidArgument, match="past the end"):
            await reg.fetch_range(ref, digest, 99_995, 10)


async def test_server_ignoring_range_still_gives_the_right_bytes(
        registry: RegistryServer, repo_name: str,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, strip_range=True)
    data = os.urandom(300_000)
    async with open_registry() as reg:
        digest = await reg.push_blob(ref_in(registry, repo_name), data)
        ref = ref_in(proxy, repo_name)
        assert await reg.fetch_range(ref, digest, 123_456, 1000) == data[123_456:124_456]
        got = await reg.fetch_ranges(ref, digest, [(10, 5), (250_000, 100)])
        assert got == [data[10:15], data[250_000:250_100]]
        async with reg.stream_blob(ref, digest, 299_000) as chunks:
            assert b"".join([c async for c in chunks]) == data[299_000:]
    assert any(k.lower() == "range" for _, _, h in proxy.log for k in h)  # we did ask


async def test_push_chunked_and_cross_repo_mount(registry: RegistryServer,
                                                 repo_name: str) -> None:
    data = os.urandom(70_000)
    async with open_registry() as reg:
        src = ref_in(registry, repo_name)
        digest = await reg.push_blob(src, data, chunk_size=16_384)
        assert reg.stats.by_kind["upload"] >= 1 + 1 + 5 + 1  # HEAD, POST, 5 PATCHes, PUT
        before = reg.stats.by_kind["upload"]
        assert await reg.push_blob(src, data) == digest  # HEAD says present: nothing sent
        assert reg.stats.by_kind["upload"] == before + 1
        dst = ref_in(registry, repo_name + "-copy")
        await reg.push_blob(dst, data, mount_from=src.path)
        assert reg.stats.by_kind["upload"] == before + 3  # HEAD + POST(mount) → 201
        desc = Descriptor("application/octet-stream", digest, len(data))
        assert await reg.fetch_blob(dst, desc) == data
        with pytest.raises(DigestMismatch):
            await reg.push_blob(dst, b"other", digest)


@pytest.mark.parametrize("reset_after", [0, 300_000])
async def test_a_reset_in_mid_blob_is_resumed(
        registry: RegistryServer, repo_name: str, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy], reset_after: int) -> None:
    # A TCP RST after the answer's headers (and maybe some body): the kernel may drop what
    # the client had not read yet, so "no bytes received" must be retried too.
    proxy = fault_proxy(registry.url, reset_after=reset_after, reset_times=1)
    data = os.urandom(1_000_000)
    async with open_registry() as reg:
        digest = await reg.push_blob(ref_in(registry, repo_name), data)
    desc = Descriptor("application/octet-stream", digest, len(data))
    async with open_registry() as reg:
        with ContentStore(tmp_path / "store") as store:
            info = await reg.fetch_blob_into(store, ref_in(proxy, repo_name), desc)
            assert info.digest == digest and store.read(digest) == data
            assert store.ingests() == []
        assert reg.stats.by_kind["blob"] + reg.stats.by_kind.get("range", 0) == 2
        assert all(start <= reset_after for start in reg.stats.range_starts)
    assert proxy.reset_times == 0
