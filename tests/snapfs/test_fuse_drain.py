"""An upgrade of the FUSE server drains (issue #12 item 3): SIGTERM to ``snapfs fuse-server``
makes it give up its control socket and pid file while it keeps serving the containers that
use its layers; a fresh server, mounted at ``<root>/fuse.1``, serves new mounts and new
layers at once; the old one exits once nothing uses it.

Real daemon, FUSE, overlay mounts with a reader process in each (``test_fuse_server``'s
"containers"); background fetching and the locality window are off, so that every first
read of a file needs the network and shows which server fetched it.
"""

from __future__ import annotations

import hashlib
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from snapfs.snapshot.types import Mount
from snapfs.sys.procs import running
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_fuse_server import (
    CONFIG,
    Reader,
    containers,
    files,
    image_layer,
    until_logged,
)
from tests.snapfs.test_lazy_pull import need_lazy, pull_through

MOVED = "layer(s) moved to the fresh FUSE server"


def lowerdirs(mounts: list[Mount]) -> str:
    return " ".join(" ".join(m.options) for m in mounts)


async def read_ok(reader: Reader, path: str, want: bytes) -> None:
    await reader.ask([path])
    answer = await reader.answer()
    assert answer == ["ok", path, hashlib.sha256(want).hexdigest()], answer


async def test_a_draining_server_keeps_its_containers_while_a_fresh_one_serves_new_mounts(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    snapfs_daemon.config_text = CONFIG
    await snapfs_daemon.restart(kill=False)
    contents = files(repo_name, 6)
    other = files(repo_name + "other", 2)
    image = await image_factory.push(registry, repo_name, [image_layer(contents)], tag="one")
    other_image = await image_factory.push(registry, repo_name, [image_layer(other)],
                                           tag="two")
    root = snapfs_daemon.root
    old_pid: int | None = None
    try:
        async with snapfs_daemon.client() as client:
            parent = str((await pull_through(client, tmp_path / "a", image.ref)
                          ).record.chain_ids[-1])
            old_pid = snapfs_daemon.fuse_server_pid
            assert old_pid is not None
            async with AsyncExitStack() as stack:
                (old,) = await stack.enter_async_context(
                    containers(client, parent, tmp_path / "c", 1))
                await read_ok(old, "data/f000", contents["data/f000"])
                assert f"{root}/fuse/" in lowerdirs(await client.mounts("c0"))

                os.kill(old_pid, signal.SIGTERM)
                await until_logged(snapfs_daemon, MOVED, 0)
                new_pid = snapfs_daemon.fuse_server_pid
                assert new_pid not in (None, old_pid)
                assert running(old_pid)

                # The running container reads on through the draining server, files that
                # need the network too (it fetches through the daemon as before).
                await read_ok(old, "data/f001", contents["data/f001"])
                # A new container of the same image mounts from the fresh server ...
                async with containers(client, parent, tmp_path / "d", 1, key="n") as (new,):
                    assert f"{root}/fuse.1/" in lowerdirs(await client.mounts("n0"))
                    await read_ok(new, "data/f002", contents["data/f002"])
                    # ... and a new image is lazy at once (not unpacked natively).
                    second = await pull_through(client, tmp_path / "b", other_image.ref)
                    assert second.lazy_layers == 1
                await read_ok(old, "data/f003", contents["data/f003"])
                assert running(old_pid)  # its mount is still used by the first container
            # Nothing uses its layers any more: it unmounts and exits.
            with trio.fail_after(30):
                while running(old_pid):
                    await trio.sleep(0.1)
            assert not os.path.ismount(root / "fuse")
            assert snapfs_daemon.fuse_server_pid == new_pid

        # A daemon restarted after the upgrade finds the fresh server where it is.
        await snapfs_daemon.restart(kill=True)
        async with (snapfs_daemon.client() as client,
                    containers(client, parent, tmp_path / "e", 1, key="r") as (again,)):
            assert f"{root}/fuse.1/" in lowerdirs(await client.mounts("r0"))
            await read_ok(again, "data/f004", contents["data/f004"])
        assert snapfs_daemon.fuse_server_pid == new_pid
    finally:
        if old_pid is not None and running(old_pid):
            os.kill(old_pid, signal.SIGKILL)  # the drained server this test started
