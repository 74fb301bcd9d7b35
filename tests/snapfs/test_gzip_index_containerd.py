"""containerd 1.6 (``ctr-remote rpull``) and ``snapfs run`` pulling an unmodified gzip image
lazily through its side index: the layers are served by snapfs as gzip-index, a container
runs, and only a fraction of the app layer is fetched (counted by snapfs, and at a proxy)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from content.registry import open_registry
from content.tarlayer import Entry
from snapfs.app.gzindex import index_image
from snapfs.client.quickstatus import status_socket
from snapfs.client.status import query_status
from tests.fixtures.containerd import ContainerdFactory
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs.test_cli_run import SnapfsCli, embedded_cli, short_dir
from tests.snapfs.test_containerd import SNAPSHOTTER, ctr, start_containerd_for


async def test_rpull_of_an_indexed_gzip_image_runs_lazily(
        snapfs_daemon: SnapfsDaemon, containerd_factory: ContainerdFactory,
        registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path) -> None:
    ctr_remote = need_binary("ctr-remote")
    # Background completion off: what is fetched is what the container read.
    snapfs_daemon.config_text = "[fetch]\nbackground = false\n"
    await snapfs_daemon.restart(kill=False)
    containerd = await start_containerd_for(snapfs_daemon.address, containerd_factory)
    rnd = random.Random(repo_name)
    app = [Entry("app", "dir"), Entry("app/data.txt", data=b"from-lower\n"),
           *(Entry(f"app/blob{i}", data=rnd.randbytes(400_000)) for i in range(8))]
    pushed = await image_factory.push(registry, repo_name, [busybox_tree, app])
    async with open_registry() as reg:
        result = await index_image(reg, pushed.ref, push=True, span=256 << 10,
                                   min_layer_size=0)
    assert len(result.layers) == 2 and result.artifact is not None
    ref = f"{registry.host}/{repo_name}:latest"
    await ctr(containerd, "image", "rpull", *SNAPSHOTTER, "--plain-http", ref,
              binary=ctr_remote)
    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, "gz1", "cat",
                    "/app/data.txt")
    assert res.stdout == "from-lower\n"
    reports = {r.digest: r for r in await query_status(status_socket(snapfs_daemon.state))}
    app_layer = pushed.image.layers[1]
    assert {r.format for r in reports.values()} == {"gzip-index"}
    got = reports[str(app_layer.digest)]
    assert 0 < got.bytes_fetched < app_layer.size // 4, (got.bytes_fetched, app_layer.size)


async def test_snapfs_run_of_an_indexed_gzip_image_fetches_a_fraction(
        embedded_cli: SnapfsCli, tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, fault_proxy: Any) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    rnd = random.Random(repo_name)
    app = [Entry("app", "dir"), Entry("app/data.txt", data=b"from-lower\n"),
           *(Entry(f"app/blob{i}", data=rnd.randbytes(400_000)) for i in range(8))]
    pushed = await image_factory.push(proxy, repo_name, [busybox_tree, app])
    async with open_registry() as reg:
        await index_image(reg, pushed.ref, push=True, span=256 << 10, min_layer_size=0)
    config = tmp_path / "config.toml"
    config.write_text("[fetch]\nbackground = false\n")
    proxy.sent.clear()
    out = await embedded_cli.ok("run", "--rm", "-q", "--config", str(config), str(pushed.ref),
                                "cat", "/app/data.txt")
    assert out == "from-lower\n"
    app_layer = pushed.image.layers[1]
    fetched = sum(n for path, n in proxy.sent.items() if str(app_layer.digest) in path)
    # Counted at the proxy: the span holding the file, not the layer.
    assert 0 < fetched < app_layer.size // 4, (fetched, app_layer.size)


__all__ = ["embedded_cli", "short_dir"]  # fixtures, imported to be found by pytest
