"""Bearer and Basic auth against the real registry, and credentials never following redirects."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from content.descriptor import Descriptor
from content.errors import Unauthorized
from content.reference import parse_reference
from content.registry import open_registry
from tests.fixtures.registry import FaultProxy, RegistryServer, TokenServer


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    path = tmp_path / "config.json"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_bearer_token_auth_push_pull_and_expiry(
        token_server: TokenServer, registry_factory: Callable[..., RegistryServer],
        repo_name: str) -> None:
    token_server.expires_in = 120
    server = registry_factory(token=token_server)
    ref = parse_reference(f"{server.host}/{repo_name}:1")
    data = os.urandom(5000)
    clock = Clock()
    async with open_registry(clock=clock) as reg:
        digest = await reg.push_blob(ref, data)
        push_scopes = [r["scopes"] for r in token_server.requests]
        assert [f"repository:{repo_name}:pull,push"] in push_scopes
        desc = Descriptor("application/octet-stream", digest, len(data))
        assert await reg.fetch_blob(ref, desc) == data
        issued = len(token_server.requests)
        assert await reg.fetch_range(ref, digest, 10, 10) == data[10:20]
        assert len(token_server.requests) == issued  # cached for the pull scope
        clock.now += 200  # past expires_in: a new token before the next request
        assert await reg.fetch_range(ref, digest, 10, 10) == data[10:20]
        assert len(token_server.requests) == issued + 1
        assert all(r["service"] == "snapfs-test-registry" for r in token_server.requests)


async def test_token_refused_by_registry_is_refreshed_once(
        token_server: TokenServer, registry_factory: Callable[..., RegistryServer],
        repo_name: str) -> None:
    server = registry_factory(token=token_server)
    ref = parse_reference(f"{server.host}/{repo_name}:1")
    async with open_registry() as reg:
        digest = await reg.push_blob(ref, b"payload")
    token_server.expired_next = 1  # the next token is already expired: the registry says 401
    async with open_registry() as reg:
        desc = Descriptor("application/octet-stream", digest, 7)
        before = len(token_server.requests)
        assert await reg.fetch_blob(ref, desc) == b"payload"
        assert len(token_server.requests) == before + 2
        token_server.expired_next = 5  # every token refused: fail, don't loop
        reg.auth._tokens.clear()
        with pytest.raises(Unauthorized, match=f"registry {server.host}: blob"):
            await reg.fetch_blob(ref, desc)


async def test_token_server_demanding_credentials(
        tmp_path: Path, registry_factory: Callable[..., RegistryServer],
        repo_name: str) -> None:
    tokens = TokenServer(tmp_path / "tok", users={"alice": "wonderland"})
    try:
        server = registry_factory(token=tokens)
        ref = parse_reference(f"{server.host}/{repo_name}:1")
        config = docker_config(tmp_path, server.host, "alice", "wonderland")
        async with open_registry(docker_config=config) as reg:
            await reg.push_blob(ref, b"x")
        assert tokens.requests[-1]["user"] == "alice"
        async with open_registry() as reg:
            with pytest.raises(Unauthorized, match=f"registry {server.host}: token server"):
                await reg.push_blob(ref, b"y")
    finally:
        tokens.close()


async def test_basic_auth_from_docker_config(
        tmp_path: Path, registry_factory: Callable[..., RegistryServer],
        repo_name: str) -> None:
    server = registry_factory(htpasswd={"alice": "wonderland"})
    ref = parse_reference(f"{server.host}/{repo_name}:1")
    good = docker_config(tmp_path, server.host, "alice", "wonderland")
    async with open_registry(docker_config=good) as reg:
        digest = await reg.push_blob(ref, b"hello")
        assert await reg.fetch_range(ref, digest, 1, 3) == b"ell"
    (tmp_path / "bad").mkdir()
    bad = docker_config(tmp_path / "bad", server.host, "alice", "nope")
    for config in (bad, None):
        async with open_registry(docker_config=config) as reg:
            with pytest.raises(Unauthorized) as info:
                await reg.fetch_range(ref, digest, 1, 3)
            assert str(info.value).startswith(f"registry {server.host}: blob {digest.short()}")


async def test_redirects_do_not_carry_authorization(
        registry: RegistryServer, repo_name: str, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, redirect_blobs=True, require_basic=("bob", "pw"))
    data = os.urandom(10_000)
    async with open_registry() as reg:
        digest = await reg.push_blob(parse_reference(f"{registry.host}/{repo_name}:1"), data)
    ref = parse_reference(f"{proxy.host}/{repo_name}:1")
    config = docker_config(tmp_path, proxy.host, "bob", "pw")
    async with open_registry(docker_config=config) as reg:
        desc = Descriptor("application/octet-stream", digest, len(data))
        assert await reg.fetch_blob(ref, desc) == data
        assert await reg.fetch_range(ref, digest, 100, 50) == data[100:150]
    blob_requests = [(p, h) for _, p, h in proxy.log if "/blobs/" in p]
    to_registry = [h for p, h in blob_requests if p.startswith("/v2/")]
    to_storage = [h for p, h in blob_requests if p.startswith("/_storage/")]
    assert to_storage and all("Authorization" not in h for h in to_storage)
    assert any("Authorization" in h for h in to_registry)
    assert any("Range" in h for h in to_storage)  # the Range header did follow
