"""Startup profiles through containerd 1.6 (``ctr-remote image rpull`` + ``ctr run``): the daemon
records the first container of an image from the Prepare of its snapshot, ``snapfs profile
push`` publishes it (the image is known to containerd only: resolved at the registry), and a
fresh node's lazy pull finds it and fetches its files before the container reads them."""

from __future__ import annotations

from pathlib import Path

from snapfs.client.quickstatus import status_socket
from snapfs.client.reports import LayerReport
from snapfs.client.status import query_status
from tests.fixtures.containerd import ContainerdFactory
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_containerd import SNAPSHOTTER, ctr, start_containerd_for
from tests.snapfs.test_profile_publish import (
    COMMAND,
    READ,
    app_digest,
    push_estargz,
    snapfs,
    snapfs_node,
    wait_for_profile,
    warnings,
)


async def _pull_and_run(node: SnapfsDaemon, factory: ContainerdFactory, ref: str,
                        name: str) -> dict[str, LayerReport]:
    containerd = await start_containerd_for(node.address, factory)
    await ctr(containerd, "image", "rpull", *SNAPSHOTTER, "--plain-http", ref,
              binary=need_binary("ctr-remote"))
    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, name, *COMMAND)
    assert res.stdout == "done\n", res.stderr
    return {r.digest: r for r in await query_status(status_socket(node.state))}


async def test_profile_recorded_published_and_used_through_containerd(
        tmp_path: Path, containerd_factory: ContainerdFactory, registry: RegistryServer,
        repo_name: str, image_factory: ImageFactory, busybox_tree: Path) -> None:
    ref = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    async with snapfs_node(tmp_path, "a") as a:
        first = await _pull_and_run(a, containerd_factory, str(ref), "prof-a")
        await wait_for_profile(a)
        shown = await snapfs(a, "profile show", "--local", str(ref))
        app = [line.split()[1] for line in shown.stdout.splitlines()
               if line.strip().split()[-1].startswith("app/")]
        assert app == [f"app/f{i}" for i in READ]
        assert (await snapfs(a, "profile push", str(ref))).stdout.startswith("pushed ")

    async with snapfs_node(tmp_path, "b") as b:
        second = await _pull_and_run(b, containerd_factory, str(ref), "prof-b")
        assert warnings(b) == []
    layer = str(await app_digest(ref))
    assert first[layer].demand_requests >= len(READ)
    assert second[layer].demand_requests == 0 < second[layer].prefetch_requests
    assert sum(r.demand_requests for r in second.values()) < sum(
        r.demand_requests for r in first.values())
