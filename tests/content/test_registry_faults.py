"""Mirrors, retries and a registry that is down, against the real registry and a proxy."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from content.descriptor import Descriptor, host_platform
from content.digest import parse_digest
from content.errors import NotFound, Unavailable
from content.reference import parse_reference
from content.registry import open_registry
from tests.content.test_registry import push_image
from tests.fixtures.registry import FaultProxy, RegistryServer, free_port

MIRRORED = "mirrored.invalid:5000"  # only a name for hosts.toml: every endpoint is loopback


def hosts_toml(tmp_path: Path, server: str, mirrors: list[tuple[str, list[str]]]) -> Path:
    lines = [f'server = "{server}"']
    for url, caps in mirrors:
        lines += [f'[host."{url}"]', f"capabilities = {caps!r}".replace("'", '"')]
    (tmp_path / "certs.d" / MIRRORED).mkdir(parents=True)
    (tmp_path / "certs.d" / MIRRORED / "hosts.toml").write_text("\n".join(lines) + "\n")
    return tmp_path / "certs.d"


async def test_mirrors_fall_through_to_one_that_works(
        registry: RegistryServer, repo_name: str, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    async with open_registry() as reg:
        pushed, layer = await push_image(
            reg, parse_reference(f"{registry.host}/{repo_name}:1"),
            host_platform(), {"f": b"mirrored"})
    pull_only = fault_proxy(registry.url)
    failing = fault_proxy(registry.url, fail_with=[500] * 100)
    dead = f"http://127.0.0.1:{free_port()}"
    hosts_dir = hosts_toml(tmp_path, registry.url, [
        (pull_only.url, ["pull"]), (dead, ["pull", "resolve"]),
        (failing.url, ["pull", "resolve"])])
    async with open_registry(hosts_dir=hosts_dir) as reg:
        ref = parse_reference(f"{MIRRORED}/{repo_name}:1")
        resolved = await reg.resolve(ref)
        assert resolved.descriptor.digest == pushed.digest
        # resolving a tag skipped the pull-only mirror, tried the dead one and the failing one
        assert not any("/manifests/1" in p for _, p, _ in pull_only.log)
        assert len(failing.log) == 5  # first try + 4 retries, then the next endpoint
        assert reg.stats.by_host[registry.host] == 1
        layer_desc = Descriptor.from_json(resolved.manifest["layers"][0])
        assert await reg.fetch_blob(ref, layer_desc) == layer
        assert any(f"/blobs/{layer_desc.digest}" in p for _, p, _ in pull_only.log)


async def test_transient_5xx_is_retried(registry: RegistryServer, repo_name: str,
                                        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, fail_with=[503, 500])
    data = os.urandom(1000)
    async with open_registry() as reg:
        digest = await reg.push_blob(parse_reference(f"{registry.host}/{repo_name}:1"), data)
        ref = parse_reference(f"{proxy.host}/{repo_name}:1")
        desc = Descriptor("application/octet-stream", digest, len(data))
        assert await reg.fetch_blob(ref, desc) == data
        assert reg.stats.retries == 2
        with pytest.raises(NotFound):
            await reg.fetch_manifest(ref, "missing")
        assert reg.stats.retries == 2  # a 404 is an answer, not a failure


async def test_persistent_5xx_is_unavailable(registry: RegistryServer, repo_name: str,
                                             fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, fail_with=[500] * 10)
    async with open_registry(retries=2) as reg:
        with pytest.raises(Unavailable) as info:
            await reg.resolve(f"{proxy.host}/{repo_name}:1")
    assert str(info.value).startswith(f"registry {proxy.host}: manifest {repo_name}:1: HTTP 500")
    assert len(proxy.log) == 3


async def test_registry_that_is_down_fails_fast_naming_the_host(repo_name: str) -> None:
    host = f"127.0.0.1:{free_port()}"
    async with open_registry() as reg:
        ref = parse_reference(f"{host}/{repo_name}:1")
        with pytest.raises(Unavailable) as info:
            await reg.resolve(ref)
        assert str(info.value) == (f"registry {host}: manifest {repo_name}:1: "
                                   "connection refused")
        assert reg.stats.requests == 1  # a refusal is an answer: not retried within a request
        digest = "sha256:" + "ab12" * 16
        with pytest.raises(Unavailable) as info:
            await reg.fetch_range(ref, parse_digest(digest), 0, 1)
        assert str(info.value) == (f"registry {host}: blob sha256:ab12ab12ab12… in "
                                   f"{repo_name}: connection refused")
