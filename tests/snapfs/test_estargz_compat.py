"""Images converted by stargz-snapshotter's own tool mount lazily in snapfs.

``ctr-remote image convert --estargz --oci`` (Debian's stargz-snapshotter) converts an image
in a private containerd's content store; ``ctr image push`` puts it in the test registry;
``snapfs pull`` must then mount every layer lazily and ``snapfs run`` must read through them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from tests.fixtures.containerd import ContainerdFactory
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need, need_binary, need_root
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_containerd import ctr, push_app_image

SNAPFS = str(Path(sys.executable).parent / "snapfs")


async def _snapfs(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [SNAPFS, args[0], "--root", str(tmp / "root"), "--state", str(tmp / "state"),
            *args[1:]]
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(argv, capture_output=True, text=True, timeout=300))


async def test_ctr_remote_converted_image_pulls_lazily_and_runs(
    containerd_factory: ContainerdFactory, registry: RegistryServer, repo_name: str,
    image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path,
) -> None:
    need_root("containerd, FUSE and overlayfs")
    need(Path("/dev/fuse").exists(), "/dev/fuse")
    ctr_remote = need_binary("ctr-remote")
    src, _ = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    dst = f"{registry.host}/{repo_name}:esgz"
    cd = containerd_factory()
    await ctr(cd, "image", "pull", "--plain-http", src)
    await ctr(cd, "image", "convert", "--estargz", "--oci", src, dst, binary=ctr_remote)
    await ctr(cd, "image", "push", "--plain-http", dst)

    pulled = await _snapfs(tmp_path, "pull", "--json", dst)
    assert pulled.returncode == 0, pulled.stderr
    report = json.loads(pulled.stdout)
    assert report["layers"] == 2
    assert report["lazy"] == 2 and report["native"] == 0
    ran = await _snapfs(tmp_path, "run", "--rm", "-q", dst, "cat", "/app/data.txt")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "from-lower\n"
