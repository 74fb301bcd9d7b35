"""Restart under load through containerd (issue #12's acceptance): 16 runc containers read
lazily (background fetching off, so their reads need the network) while the daemon is
restarted 10 times, 5 by SIGTERM and 5 by SIGKILL: 0 read errors, 0 wrong bytes (sha256 of
every file), every container finishes with exit status 0.

Each container reads its own slice of the image's files, one a second, so reads keep
arriving throughout the restarts; those that need the network while no daemon runs wait
for the next one (the FUSE server says so in the log, and the test requires that it did).
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest
import trio

from content.compression import media_type_for
from content.estargz import build_estargz
from content.image import Layer
from content.tarlayer import Entry, build_tar, entries_from_dir
from tests.fixtures.containerd import Containerd, ContainerdFactory
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_containerd import GC_LIMIT, SNAPSHOTTER, ctr, start_containerd_for

CONTAINERS = 16
FILES_EACH = 12
RESTARTS = 10
T = 1_600_000_000
SCRIPT = ("touch /out/started; for f in $(cat /lists/{n}); do "
          "busybox sha256sum /$f >> /out/sums || echo FAIL $f >> /out/sums; sleep 1; done")


@pytest.fixture
async def lazy_containerd(snapfs_daemon: SnapfsDaemon,
                          containerd_factory: ContainerdFactory) -> Containerd:
    # After snapfs_daemon (the fixture), so containerd is stopped first at teardown; the
    # daemon restarts with background fetching off before containerd dials it.
    snapfs_daemon.config_text = "[fetch]\nbackground = false\nwindow = 0\n"
    await snapfs_daemon.restart(kill=False)
    return await start_containerd_for(snapfs_daemon.address, containerd_factory)


def data_files(seed: str) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"data/f{i:03d}": rnd.randbytes(rnd.randrange(8_000, 40_000))
            for i in range(CONTAINERS * FILES_EACH)}


async def until(check: object, what: str) -> None:
    with trio.fail_after(GC_LIMIT):
        while not await trio.to_thread.run_sync(check):  # type: ignore[arg-type]
            await trio.sleep(0.1)


async def test_sixteen_lazy_containers_finish_through_ten_daemon_restarts(
    snapfs_daemon: SnapfsDaemon, lazy_containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path,
) -> None:
    ctr_remote = need_binary("ctr-remote")
    need_binary("runc")
    containerd = lazy_containerd
    data = data_files(repo_name)
    entries = [*entries_from_dir(busybox_tree), Entry("data", "dir", mtime=T)]
    entries += [Entry(p, data=d, mtime=T) for p, d in data.items()]
    built = build_estargz(io.BytesIO(build_tar(entries)))
    assert built.blob is not None
    layer = Layer(blob=built.blob, media_type=media_type_for("gzip"), diff_id=built.diff_id,
                  annotations=built.annotations)
    await image_factory.push(registry, repo_name, [layer])
    ref = f"{registry.host}/{repo_name}:latest"
    await ctr(containerd, "image", "rpull", *SNAPSHOTTER, "--plain-http", ref,
              binary=ctr_remote)

    paths = sorted(data)
    lists, outs = tmp_path / "lists", []
    lists.mkdir()
    for n in range(CONTAINERS):
        (lists / str(n)).write_text("\n".join(paths[n::CONTAINERS]) + "\n")
        out = tmp_path / f"out{n}"
        out.mkdir()
        outs.append(out)
    codes: dict[int, int] = {}

    async def run(n: int) -> None:
        res = await ctr(
            containerd, "run", *SNAPSHOTTER,
            "--mount", f"type=bind,src={lists},dst=/lists,options=rbind:ro",
            "--mount", f"type=bind,src={outs[n]},dst=/out,options=rbind:rw",
            ref, f"reader-{n}", "sh", "-c", SCRIPT.format(n=n), check=False)
        codes[n] = res.returncode
        assert res.returncode == 0, res.stderr

    waits_before = snapfs_daemon.log.read_text(errors="replace").count("waiting up to")
    async with trio.open_nursery() as nursery:
        for n in range(CONTAINERS):
            nursery.start_soon(run, n)
        await until(lambda: all((o / "started").exists() for o in outs), "containers started")
        server = snapfs_daemon.fuse_server_pid
        for i in range(RESTARTS):
            await snapfs_daemon.stop(kill=i % 2 == 1)
            await trio.sleep(1.5)  # readers keep reading (and waiting) meanwhile
            await snapfs_daemon.start()
            await trio.sleep(0.5)
        assert snapfs_daemon.fuse_server_pid == server
    assert codes == dict.fromkeys(range(CONTAINERS), 0)
    for n, out in enumerate(outs):
        lines = (out / "sums").read_text().splitlines()
        want = [f"{hashlib.sha256(data[p]).hexdigest()}  /{p}" for p in paths[n::CONTAINERS]]
        assert lines == want, f"container {n}"
    waits = snapfs_daemon.log.read_text(errors="replace").count("waiting up to")
    assert waits > waits_before  # reads did need the network while no daemon ran
    for n in range(CONTAINERS):
        await ctr(containerd, "containers", "rm", f"reader-{n}", check=False)
