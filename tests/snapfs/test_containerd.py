"""Real containerd 1.6 driving ``snapfs serve`` as its ``snapfs`` proxy snapshotter.

Each test pulls a small two-layer busybox image from the real registry with ``ctr`` and checks
what a user sees: ``ctr`` output and exit codes, container stdout, and — because ``ctr
snapshots ls`` prints an empty table with exit 0 even when snapfs is unreachable — the
snapshots as snapfs itself reports them through its own client.

containerd namespaces the keys it hands to a proxy snapshotter (``<ns>/<n>/<key>``), so
snapfs-side names are matched by suffix (``backend``).
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

from content.tarlayer import Entry
from snapfs.app.pull import chain_ids
from snapfs.client.snapshots import open_client
from snapfs.errors import FailedPrecondition, NotFound
from snapfs.snapshot.types import Info, Kind
from tests.fixtures.containerd import Containerd, ContainerdFactory
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import RegistryServer

PROXY = "snapfs"  # the proxy plugin's name: what containerd sends as `snapshotter`
SNAPSHOTTER = ("--snapshotter", PROXY)
GC_LIMIT = 60.0  # generous bound on containerd's GC (normally well under a second)
APP_LAYER = [Entry("app", "dir"), Entry("app/data.txt", data=b"from-lower\n")]


# -- helpers shared with test_containerd_gc ------------------------------------------------------


async def ctr(
    cd: Containerd, *args: str, check: bool = True, binary: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``ctr`` in a worker thread, so the trio loop (maybe serving snapfs) stays free."""
    return await trio.to_thread.run_sync(
        partial(cd.ctr, *args, check=check, binary=binary, timeout=120)
    )


async def snap(cd: Containerd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return await ctr(cd, "snapshots", *SNAPSHOTTER, *args, check=check)


async def push_app_image(
    image_factory: ImageFactory, registry: RegistryServer, repo: str, busybox: Path
) -> tuple[str, list[str]]:
    """Push busybox + an app layer; return the reference and the layers' chain IDs."""
    pushed = await image_factory.push(registry, repo, [busybox, APP_LAYER])
    chains = chain_ids([layer.diff_id for layer in pushed.image.layers])
    return f"{registry.host}/{repo}:latest", [str(c) for c in chains]


def ls_rows(stdout: str) -> list[tuple[str, str, str]]:
    """``ctr snapshots ls`` as (key, parent, kind); a blank parent column means no parent."""
    rows = []
    for line in stdout.splitlines()[1:]:
        f = line.split()
        if len(f) == 3:
            rows.append((f[0], f[1], f[2]))
        elif len(f) == 2:
            rows.append((f[0], "", f[1]))
    return rows


def backend(infos: Sequence[Info], key: str) -> Info:
    """The snapfs-side snapshot containerd calls ``key``."""
    found = [i for i in infos if i.name == key or i.name.endswith("/" + key)]
    assert len(found) == 1, f"snapfs has no single snapshot for {key}: {[i.name for i in infos]}"
    return found[0]


async def snapfs_list(address: Path | str, snapshotter: str = PROXY) -> list[Info]:
    """What snapfs lists to containerd (``snapshotter``: or to another client)."""
    async with open_client(str(address), snapshotter=snapshotter) as c:
        return await c.list()


async def wait_for_snapfs(
    address: Path | str, done: Callable[[list[Info]], bool], limit: float = GC_LIMIT,
    snapshotter: str = PROXY,
) -> list[Info]:
    """Poll snapfs's List until ``done(infos)``: containerd removes backend snapshots in its
    asynchronous GC, after the metadata change that ``ctr`` waits for."""
    infos: list[Info] = []
    with trio.move_on_after(limit):
        while not done(infos := await snapfs_list(address, snapshotter)):
            await trio.sleep(0.05)
        return infos
    raise AssertionError(f"snapfs still lists {[i.name for i in infos]} after {limit}s")


async def start_containerd_for(address: Path | str, factory: ContainerdFactory) -> Containerd:
    """containerd with snapfs at ``address`` as its ``snapfs`` proxy (which must be serving:
    containerd dials proxy plugins once, at startup)."""
    return await trio.to_thread.run_sync(partial(factory, proxy_socket=str(address)))


@pytest.fixture
async def containerd(
    snapfs_daemon: SnapfsDaemon, containerd_factory: ContainerdFactory
) -> Containerd:
    # Requested after snapfs_daemon, so containerd is stopped first at teardown.
    return await start_containerd_for(snapfs_daemon.address, containerd_factory)


# -- tests -------------------------------------------------------------------------------------


async def test_pull_commits_the_layer_chain_in_snapfs(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    ref, (base, top) = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "pull", *SNAPSHOTTER, "--plain-http", ref)

    rows = ls_rows((await snap(containerd, "ls")).stdout)
    assert sorted(rows) == sorted([(base, "", "Committed"), (top, base, "Committed")])
    async with snapfs_daemon.client(PROXY) as c:
        infos = await c.list()
        assert len(infos) == 2
        b, t = backend(infos, base), backend(infos, top)
        assert (b.kind, b.parent) == (Kind.COMMITTED, "")
        assert (t.kind, t.parent) == (Kind.COMMITTED, b.name)
        # The unpacked bytes are really on snapfs's side: the app layer holds one 11-byte file.
        assert (await c.usage(t.name)).size == len(b"from-lower\n")
        assert (await c.usage(b.name)).size > 100_000  # static busybox


async def test_run_reads_the_lower_layer_and_writes_the_upper(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    need_binary("runc")
    ref, _ = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "pull", *SNAPSHOTTER, "--plain-http", ref)

    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, "rw-1",
                    "sh", "-c", "cat /app/data.txt && echo written > /new && cat /new")
    assert res.stdout.splitlines() == ["from-lower", "written"]
    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, "exit-3", "sh", "-c", "exit 3",
                    check=False)
    assert res.returncode == 3, res.stderr
    # --rm removed both containers' active snapshots; containerd's GC removes them from snapfs.
    infos = await wait_for_snapfs(snapfs_daemon.address, lambda infos: len(infos) == 2)
    assert [i.kind for i in infos] == [Kind.COMMITTED, Kind.COMMITTED]


async def test_snapshot_commands(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path,
) -> None:
    ref, (base, top) = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "pull", *SNAPSHOTTER, "--plain-http", ref)

    info = json.loads((await snap(containerd, "info", top)).stdout)
    assert (info["Name"], info["Parent"], info["Kind"]) == (top, base, "Committed")
    usage = (await snap(containerd, "usage", top)).stdout.splitlines()
    assert usage[1].split() == [top, "11.0", "B", "3"]  # /, app/, app/data.txt

    await snap(containerd, "prepare", "k", top)
    await snap(containerd, "label", "k", "containerd.io/snapshot/owner=test")
    async with snapfs_daemon.client(PROXY) as c:
        k = backend(await c.list(), "k")
        # containerd forwards containerd.io/snapshot/ labels (and only those) to snapfs.
        assert k.labels == {"containerd.io/snapshot/owner": "test"}
        assert k.kind == Kind.ACTIVE
        assert k.parent.endswith("/" + top)

    target = tmp_path / "mnt"
    target.mkdir()
    out = (await snap(containerd, "mounts", str(target), "k")).stdout.strip()
    cmd = out.split()
    assert cmd[:5] == ["mount", "-t", "overlay", "overlay", str(target)] and cmd[5] == "-o"
    opts = dict(o.partition("=")[::2] for o in cmd[6].split(","))
    lowers = opts["lowerdir"].split(":")
    assert len(lowers) == 2  # the app layer above busybox: leftmost is topmost
    assert (Path(lowers[0]) / "app/data.txt").read_bytes() == b"from-lower\n"
    assert (Path(lowers[1]) / "bin/busybox").is_file()
    for d in ("upperdir", "workdir", *lowers):
        assert Path(opts.get(d, d)).is_relative_to(snapfs_daemon.root)
    # What `ctr snapshots mounts … | sh` does: the printed command works as printed.
    await trio.run_process(cmd)
    try:
        assert (target / "app/data.txt").read_bytes() == b"from-lower\n"
        (target / "new").write_text("upper")
        assert (Path(opts["upperdir"]) / "new").read_text() == "upper"
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process(["umount", str(target)], check=False)
    usage = (await snap(containerd, "usage", "k")).stdout.splitlines()
    assert usage[1].split()[1:] == ["5.0", "B", "2"]  # the upper holds "upper"

    await snap(containerd, "rm", "k")
    res = await snap(containerd, "info", "k", check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    infos = await wait_for_snapfs(
        snapfs_daemon.address, lambda infos: k.name not in {i.name for i in infos}
    )
    assert len(infos) == 2
    async with snapfs_daemon.client(PROXY) as c:
        with pytest.raises(NotFound):
            await c.stat(k.name)


async def test_removing_a_parent_fails_and_snapfs_keeps_serving(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    ref, (base, top) = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "pull", *SNAPSHOTTER, "--plain-http", ref)

    res = await snap(containerd, "rm", base, check=False)
    assert res.returncode != 0
    assert "failed precondition" in res.stderr
    async with snapfs_daemon.client(PROXY) as c:
        # containerd's own metadata refused first; snapfs refuses the same way when asked directly.
        b = backend(await c.list(), base)
        with pytest.raises(FailedPrecondition, match="has children"):
            await c.remove(b.name)
        assert (await c.stat(b.name)).kind == Kind.COMMITTED
    assert snapfs_daemon.process is not None and snapfs_daemon.process.poll() is None
    assert sorted(ls_rows((await snap(containerd, "ls")).stdout)) == sorted(
        [(base, "", "Committed"), (top, base, "Committed")]
    )
    await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, "after-rm", "cat", "/app/data.txt")


async def test_remote_pull_of_plain_layers_unpacks_natively(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    # stargz's client asks for remote snapshots (snapshot.ref + stargz labels on Prepare); a
    # plain gzip layer cannot be lazy, so snapfs answers mounts and containerd unpacks it.
    ctr_remote = need_binary("ctr-remote")
    ref, (base, top) = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "rpull", *SNAPSHOTTER, "--plain-http", ref, binary=ctr_remote)

    assert sorted(ls_rows((await snap(containerd, "ls")).stdout)) == sorted(
        [(base, "", "Committed"), (top, base, "Committed")]
    )
    async with snapfs_daemon.client(PROXY) as c:
        t = backend(await c.list(), top)
        assert t.labels["containerd.io/snapshot.ref"] == top
        assert t.labels["containerd.io/snapshot/remote/stargz.reference"] == ref
        assert (await c.usage(t.name)).size == len(b"from-lower\n")  # unpacked, not lazy
    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, "rpulled", "cat", "/app/data.txt")
    assert res.stdout == "from-lower\n"


async def test_images_survive_a_snapfs_restart(
    snapfs_daemon: SnapfsDaemon, containerd: Containerd, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    need_binary("runc")
    ref, _ = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await ctr(containerd, "image", "pull", *SNAPSHOTTER, "--plain-http", ref)
    await snapfs_daemon.restart(kill=True)
    # containerd redials its proxy with a backoff of at most 3 s; until then calls fail fast
    # with "unavailable". Anything else is a real failure.
    with trio.fail_after(GC_LIMIT):
        for attempt in itertools.count():
            res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, ref, f"restarted-{attempt}",
                            "cat", "/app/data.txt", check=False)
            if res.returncode == 0 or "unavailable" not in res.stderr:
                break
            await trio.sleep(0.2)
    assert (res.returncode, res.stdout) == (0, "from-lower\n"), res.stderr
