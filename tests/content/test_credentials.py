"""Credentials from docker's config.json: credential helpers (a real script the test writes,
run as docker would), and bearer tokens that expire in the middle of a lazy fetch."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from content.credentials import Credentials, DockerConfig
from content.errors import Unauthorized
from content.reference import parse_reference
from content.registry import open_registry
from tests.fixtures.registry import RegistryServer, TokenServer

HELPER = """#!/bin/sh
# docker-credential-snapfstest: answers `get` for {host} only; logs what it was asked.
read -r url
echo "$1 $url" >> {log}
if [ "$1" = get ] && [ "$url" = "{host}" ]; then
  printf '%s' '{{"ServerURL":"{host}","Username":"{user}","Secret":"{secret}"}}'
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
"""


def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, user: str,
                   secret: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    helper = bin_dir / "docker-credential-snapfstest"
    helper.write_text(HELPER.format(host=host, user=user, secret=secret, log=log))
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


async def test_cred_helper_is_asked_with_the_server_url_on_stdin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        registry_factory: Callable[..., RegistryServer], repo_name: str) -> None:
    server = registry_factory(htpasswd={"alice": "wonderland"})
    log = install_helper(tmp_path, monkeypatch, server.host, "alice", "wonderland")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {server.host: {}},
                                  "credHelpers": {server.host: "snapfstest"}}))
    ref = parse_reference(f"{server.host}/{repo_name}:1")
    async with open_registry(docker_config=config) as reg:
        digest = await reg.push_blob(ref, b"hello, helper")
        assert await reg.fetch_range(ref, digest, 7, 6) == b"helper"
    asked = log.read_text().splitlines()
    assert asked and set(asked) == {f"get {server.host}"}

    # credsStore: the same helper for every host; one it has nothing for is anonymous.
    config.write_text(json.dumps({"credsStore": "snapfstest"}))
    source = DockerConfig(config)
    assert await source.get(server.host) == Credentials("alice", "wonderland")
    assert await source.get("elsewhere.example") is None
    assert log.read_text().splitlines()[-1] == "get elsewhere.example"

    # A helper that is not installed is named, not silently skipped.
    config.write_text(json.dumps({"credsStore": "nosuchhelper"}))
    with pytest.raises(Unauthorized, match="docker-credential-nosuchhelper"):
        await DockerConfig(config).get(server.host)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_token_expiring_mid_fetch_is_renewed_and_the_range_retried_once(
        token_server: TokenServer, registry_factory: Callable[..., RegistryServer],
        repo_name: str) -> None:
    token_server.expires_in = 10  # short: renewed after 5 s (the margin) of our clock
    server = registry_factory(token=token_server)
    ref = parse_reference(f"{server.host}/{repo_name}:1")
    data = os.urandom(256 * 1024)
    clock = Clock()
    async with open_registry(clock=clock) as reg:
        digest = await reg.push_blob(ref, data)
        assert await reg.fetch_range(ref, digest, 0, 4096) == data[:4096]
        before = len(token_server.requests)
        ranges_before = reg.stats.by_kind["range"]
        # Mid-fetch the token lapses by our clock, and the one the server hands out next
        # is already expired for the registry: 401 on the Range, a fresh token, one retry.
        clock.now += 60
        token_server.expired_next = 1
        assert await reg.fetch_range(ref, digest, 65536, 4096) == data[65536:65536 + 4096]
        assert len(token_server.requests) == before + 2
        assert reg.stats.by_kind["range"] == ranges_before + 2
        # Within the lifetime of the fresh token no token is asked for.
        assert await reg.fetch_range(ref, digest, 131072, 10) == data[131072:131082]
        assert len(token_server.requests) == before + 2
        # A token refused again after the one refresh is final: no loop.
        clock.now += 60
        token_server.expired_next = 5
        with pytest.raises(Unauthorized, match=f"registry {server.host}: blob"):
            await reg.fetch_range(ref, digest, 0, 10)
        assert len(token_server.requests) == before + 4
