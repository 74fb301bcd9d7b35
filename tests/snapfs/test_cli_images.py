"""``snapfs images``, ``snapfs rmi`` and ``snapfs ps`` against real snapshots, embedded and
through a daemon."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import (
    EXIT_SNAPFS_ERROR,
    SnapfsCli,
    push_app_image,
    run_snapshots,
    start_sleeper,
)

# Fixtures shared with test_cli_run (a per-test daemon or embedded snapfs, its dirs).
snapfs_cli = test_cli_run.snapfs_cli
short_dir = test_cli_run.short_dir


async def test_images_lists_what_was_pulled(snapfs_cli: SnapfsCli, registry: RegistryServer,
                                            repo_name: str, image_factory: ImageFactory,
                                            busybox_tree: Path) -> None:
    assert json.loads(await snapfs_cli.ok("images", "--json")) == []
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await snapfs_cli.ok("pull", "-q", str(img.ref))
    table = (await snapfs_cli.ok("images")).splitlines()
    assert table[0].split() == ["IMAGE", "DIGEST", "SIZE", "COMPRESSED", "LOCAL", "LAZY"]
    assert table[1].split()[:2] == [str(img.ref), img.image.digest.short()]
    assert table[1].split()[-1] == "no"


async def test_rmi_removes_the_image_and_its_unused_snapshots(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    other = await image_factory.push(registry, repo_name, [busybox_tree], tag="base")
    await snapfs_cli.ok("pull", "-q", str(img.ref))
    await snapfs_cli.ok("pull", "-q", str(other.ref))
    assert len(await snapfs_cli.snapshots()) == 2  # the base layer is shared
    assert await snapfs_cli.ok("rmi", str(img.ref)) == f"untagged: {img.ref}\n"
    names = [i["name"] for i in json.loads(await snapfs_cli.ok("images", "--json"))]
    assert names == [str(other.ref)]
    # The app layer went; the base layer stays, as the other image still uses it.
    assert len(await snapfs_cli.snapshots()) == 1
    await snapfs_cli.ok("rmi", str(other.ref))
    assert await snapfs_cli.snapshots() == []
    res = await snapfs_cli("rmi", str(other.ref))
    assert res.status == EXIT_SNAPFS_ERROR
    assert res.stderr.startswith("snapfs: ") and res.stderr.count("\n") == 1


async def test_rmi_keeps_the_layers_a_container_uses(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await snapfs_cli.ok("run", "-q", "--name", "user", str(img.ref), "touch", "/root/x")
    before = await snapfs_cli.snapshots()
    await snapfs_cli.ok("rmi", str(img.ref))
    assert await snapfs_cli.snapshots() == before  # the container's snapshot and its parents
    await snapfs_cli.ok("rm", "user")
    # With the container gone, nothing holds the layers: a later rmi of anything collects them.
    await snapfs_cli.ok("pull", "-q", str(img.ref))
    await snapfs_cli.ok("rmi", str(img.ref))
    assert await snapfs_cli.snapshots() == []


async def test_ps_shows_running_and_exited_containers(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    res = await snapfs_cli("run", "-q", "--name", "done", str(img.ref), "sh", "-c", "exit 3")
    assert res.status == 3, res.stderr
    proc = await start_sleeper(snapfs_cli, str(img.ref), tmp_path / "out", "--rm",
                                "--name", "sleeper", "--stop-timeout", "0")
    running = json.loads(await snapfs_cli.ok("ps", "--json"))
    assert [(c["name"], c["status"]) for c in running] == [("sleeper", "running")]
    table = (await snapfs_cli.ok("ps", "-a")).splitlines()
    assert [line.split()[1] for line in table[1:]] == ["done", "sleeper"]
    assert "exited (3)" in table[1] and "running" in table[2]
    assert len(run_snapshots(await snapfs_cli.snapshots())) == 2
    res = await snapfs_cli("rm", "sleeper")
    assert res.status == EXIT_SNAPFS_ERROR and "still running" in res.stderr
    proc.terminate()
    assert await proc.wait() == 143
    everything = json.loads(await snapfs_cli.ok("ps", "-a", "--json"))
    assert [(c["name"], c["exit_code"]) for c in everything] == [("done", 3)]
