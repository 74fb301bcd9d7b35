"""A private registry reached with credentials from a docker ``config.json`` only.

``snapfs pull`` and ``snapfs run`` (real subprocesses, embedded mode) pull a private eStargz
image lazily from an htpasswd-protected docker-registry: no credentials on the command line,
just ``DOCKER_CONFIG``; the bytes fetched stay far below the image's size (no fallback to a
full pull). Without the config the same pull is refused.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from content.convert import convert_image
from content.reference import Reference, parse_reference
from content.registry import open_registry
from content.tarlayer import Entry
from snapfs.sys.mountops import detach_all_under
from tests.fixtures.daemon import SNAPFS
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer

WAIT = 120.0
BIG = os.urandom(4 << 20)  # incompressible: a full pull would fetch at least this much
APP = [Entry("app", "dir"), Entry("app/data", data=b"private hello\n"),
       Entry("app/big", data=BIG)]


def write_docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory


@pytest.fixture
async def private_image(registry: RegistryServer, registry_factory: Callable[..., RegistryServer],
                        image_factory: ImageFactory, busybox_tree: Path, repo_name: str,
                        tmp_path: Path) -> AsyncIterator[tuple[Reference, Path]]:
    private = registry_factory(htpasswd={"alice": "wonderland"})
    config_dir = write_docker_config(tmp_path / "docker", private.host, "alice", "wonderland")
    src = (await image_factory.push(registry, repo_name, [busybox_tree, APP])).ref
    dst = parse_reference(f"{private.host}/{repo_name}:esgz")
    async with open_registry(docker_config=config_dir / "config.json") as reg:
        await convert_image(reg, src, dst, format="estargz")
    yield dst, config_dir


async def snapfs(tmp_path: Path, *args: str, docker_config: Path | None
                 ) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "config.toml"
    # Not /etc/snapfs/config.toml: the node's own settings stay out. No background fetch:
    # the pull's byte count is then what the lazy pull itself needs, whatever the timing.
    config.write_text("[fetch]\nbackground = false\n")
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
    env["HOME"] = str(tmp_path / "home")  # no ~/.docker of the user running the tests
    if docker_config is not None:
        env["DOCKER_CONFIG"] = str(docker_config)
    command, *rest = args
    argv = [str(SNAPFS), command, "--root", str(tmp_path / "root"), "--state",
            str(tmp_path / "state"), "--config", str(config), *rest]
    with trio.fail_after(WAIT):
        return await trio.run_process(argv, env=env, check=False, stdin=subprocess.DEVNULL,
                                      capture_stdout=True, capture_stderr=True)


async def test_private_estargz_image_pulled_lazily_and_run_with_config_json_credentials(
        private_image: tuple[Reference, Path], tmp_path: Path) -> None:
    ref, config_dir = private_image
    try:
        refused = await snapfs(tmp_path, "pull", "--json", str(ref), docker_config=None)
        assert refused.returncode == 125
        assert b"access denied (HTTP 401)" in refused.stderr, refused.stderr

        pulled = await snapfs(tmp_path, "pull", "--json", str(ref), docker_config=config_dir)
        assert pulled.returncode == 0, pulled.stderr.decode()
        report = json.loads(pulled.stdout)
        assert (report["lazy"], report["native"]) == (2, 0)
        # Lazy: manifest, config, footers and TOCs; not the 4 MiB file (or the layers).
        assert report["bytes_fetched"] < len(BIG) // 4, report

        ran = await snapfs(tmp_path, "run", "--rm", "-q", str(ref), "cat", "/app/data",
                           docker_config=config_dir)
        assert (ran.returncode, ran.stdout) == (0, b"private hello\n"), ran.stderr.decode()
    finally:
        await trio.to_thread.run_sync(detach_all_under, tmp_path / "root")
