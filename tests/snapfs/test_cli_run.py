"""Acceptance tests for ``snapfs run`` (issue #5), driving the real CLI as a subprocess.

Real registry, real overlayfs, real runc; each test runs against an embedded snapshotter and,
where parametrised, against a running ``snapfs serve`` reached through its socket. The
``snapfs_cli`` fixture and the image helpers here are shared with test_cli_images.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from content.tarlayer import Entry
from runtime.runc import Runc
from snapfs.client.snapshots import open_client
from snapfs.snapshot.snapshotter import open_snapshotter
from snapfs.snapshot.types import Snapshots
from snapfs.sys.mountinfo import mounts_under
from snapfs.sys.mountops import detach_all_under
from tests.fixtures.daemon import SnapfsDaemon, free_port, kill_fuse_server
from tests.fixtures.images import ImageFactory, PushedImage
from tests.fixtures.realenv import need, need_binary, need_root
from tests.fixtures.registry import FaultProxy, RegistryServer

SNAPFS = Path(sys.executable).parent / "snapfs"
EXIT_SNAPFS_ERROR = 125
WAIT = 60.0  # bound on waiting for a subprocess event, so a hang fails instead of blocking CI

APP_PASSWD = (b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
              b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
APP_GROUP = b"root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"
# A second layer over busybox_tree: a user to run as, with a home directory.
APP_LAYER = [
    Entry("etc", "dir"), Entry("etc/passwd", data=APP_PASSWD), Entry("etc/group", data=APP_GROUP),
    Entry("home", "dir"), Entry("home/app", "dir", uid=1000, gid=1000),
]


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


@dataclass
class SnapfsCli:
    """``snapfs`` subprocesses on one root/state, embedded or through a daemon's socket."""

    mode: str
    root: Path
    state: Path
    address: Path
    daemon: SnapfsDaemon | None = None
    procs: list[trio.Process] = field(default_factory=list)

    def argv(self, command: str, *args: str) -> list[str]:
        return [str(SNAPFS), command, "--root", str(self.root), "--state", str(self.state),
                "--address", str(self.address), *args]

    async def __call__(self, command: str, *args: str) -> Result:
        with trio.fail_after(WAIT):
            proc = await trio.run_process(self.argv(command, *args), check=False,
                                          stdin=subprocess.DEVNULL, capture_stdout=True,
                                          capture_stderr=True)
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    async def ok(self, command: str, *args: str) -> str:
        res = await self(command, *args)
        assert res.status == 0, f"snapfs {command} {args}: {res.status}\n{res.stderr}"
        return res.stdout

    async def start(self, command: str, *args: str, stdout: int) -> trio.Process:
        proc = await trio.lowlevel.open_process(self.argv(command, *args),
                                                stdin=subprocess.DEVNULL, stdout=stdout,
                                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    async def snapshots(self) -> list[str]:
        """Names of every snapshot, through the Snapshots API the CLI used."""
        sn: AbstractAsyncContextManager[Snapshots] = (
            open_client(str(self.address)) if self.daemon is not None
            else open_snapshotter(self.root))
        async with sn as snapshots:
            return sorted(i.name for i in await snapshots.list())

    def runc(self) -> Runc:
        return Runc(root=self.state / "runc")

    async def teardown(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            runc = self.runc()
            for c in await runc.list():
                with contextlib.suppress(Exception):
                    await runc.delete(c["id"], force=True)
        # Daemon-less commands share one FUSE server; it exits once unused, but a failed
        # test may leave it in use.
        await kill_fuse_server(self.state)
        for base in (self.state, self.root):
            await trio.to_thread.run_sync(detach_all_under, base)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket and runc state paths must stay short; pytest's tmp_path is long.
    path = Path(tempfile.mkdtemp(prefix="snapfs-cli", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _need_run() -> None:
    need_root("root, to mount overlays and run runc containers")
    need_binary("runc")
    need(SNAPFS.exists(), f"{SNAPFS} (run scripts/setup)")


@pytest.fixture(params=["embedded", "daemon"])
async def snapfs_cli(request: pytest.FixtureRequest, tmp_path: Path,
                     short_dir: Path) -> AsyncIterator[SnapfsCli]:
    _need_run()
    root, state, address = tmp_path / "root", short_dir / "state", short_dir / "snapfs.sock"
    daemon = None
    if request.param == "daemon":
        daemon = SnapfsDaemon(root, address, state, tmp_path / "serve.log", free_port())
    cli = SnapfsCli(request.param, root, state, address, daemon)
    try:
        if daemon is not None:
            await daemon.start()
        yield cli
    finally:
        with trio.CancelScope(shield=True):
            await cli.teardown()
            if daemon is not None:
                await daemon.stop()
                await daemon.kill_fuse_server()
            await trio.to_thread.run_sync(detach_all_under, root)


@pytest.fixture
async def embedded_cli(tmp_path: Path, short_dir: Path) -> AsyncIterator[SnapfsCli]:
    """Embedded mode only: for behaviour that does not depend on where snapshots live."""
    _need_run()
    cli = SnapfsCli("embedded", tmp_path / "root", short_dir / "state",
                    short_dir / "snapfs.sock")
    try:
        yield cli
    finally:
        with trio.CancelScope(shield=True):
            await cli.teardown()


async def push_app_image(image_factory: ImageFactory, registry: RegistryServer | FaultProxy,
                         repo: str, busybox_tree: Path,
                         config: dict[str, Any] | None = None) -> PushedImage:
    return await image_factory.push(registry, repo, [busybox_tree, APP_LAYER],
                                    config=config if config is not None else {"Cmd": ["/bin/sh"]})


def run_snapshots(names: Sequence[str]) -> list[str]:
    return [n for n in names if n.startswith("snapfs-run-")]


# -- exit codes, env, workdir, user -------------------------------------------------------------


async def test_exit_status_propagates(snapfs_cli: SnapfsCli, registry: RegistryServer,
                                      repo_name: str, image_factory: ImageFactory,
                                      busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    res = await snapfs_cli("run", "--rm", "-q", str(img.ref), "sh", "-c", "echo hi; exit 7")
    assert (res.status, res.stdout) == (7, "hi\n"), res.stderr
    res = await snapfs_cli("run", "--rm", "-q", str(img.ref), "true")
    assert res.status == 0, res.stderr


async def test_env_workdir_and_user_apply(snapfs_cli: SnapfsCli, registry: RegistryServer,
                                          repo_name: str, image_factory: ImageFactory,
                                          busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree,
                               {"Cmd": ["/bin/sh"], "Env": ["FROM_IMAGE=1", "OVERRIDE=image"]})
    out = await snapfs_cli.ok("run", "--rm", "-q", "-e", "OVERRIDE=flag", "-e", "EXTRA=x y",
                              "-w", "/tmp", "-u", "app", str(img.ref),
                              "sh", "-c", "env; echo cwd=$(pwd); id")
    lines = out.splitlines()
    assert {"FROM_IMAGE=1", "OVERRIDE=flag", "EXTRA=x y"} <= set(lines)
    assert "cwd=/tmp" in lines
    assert lines[-1].startswith("uid=1000(app) gid=1000(app)")
    assert "50(staff)" in lines[-1]


# -- the container's snapshot ------------------------------------------------------------------


async def test_rm_discards_writes(snapfs_cli: SnapfsCli, registry: RegistryServer,
                                  repo_name: str, image_factory: ImageFactory,
                                  busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    out = await snapfs_cli.ok("run", "--rm", "-q", str(img.ref),
                              "sh", "-c", "echo data > /root/f; cat /root/f")
    assert out == "data\n"
    assert run_snapshots(await snapfs_cli.snapshots()) == []
    # A new container starts from the image again, not from the last one's writes.
    res = await snapfs_cli("run", "--rm", "-q", str(img.ref), "cat", "/root/f")
    assert res.status == 1 and "No such file" in res.stderr


async def test_without_rm_the_container_and_its_writes_stay_until_rm(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    await snapfs_cli.ok("run", "-q", "--name", "keeper", str(img.ref),
                        "sh", "-c", "echo kept > /root/f")
    ps = json.loads(await snapfs_cli.ok("ps", "-a", "--json"))
    assert [(c["name"], c["status"], c["exit_code"]) for c in ps] == [("keeper", "exited", 0)]
    snapshot = ps[0]["snapshot"]
    assert run_snapshots(await snapfs_cli.snapshots()) == [snapshot]
    # The write is in the container's snapshot (its upper dir), not in the image.
    uppers = list(snapfs_cli.root.rglob("root/f"))
    assert [p.read_text() for p in uppers] == ["kept\n"]
    assert json.loads(await snapfs_cli.ok("ps", "--json")) == []  # not running
    await snapfs_cli.ok("rm", "keeper")
    assert json.loads(await snapfs_cli.ok("ps", "-a", "--json")) == []
    assert run_snapshots(await snapfs_cli.snapshots()) == []
    res = await snapfs_cli("rm", "keeper")
    assert res.status == EXIT_SNAPFS_ERROR and res.stderr.startswith("snapfs: ")


# -- no registry traffic for what is local -----------------------------------------------------


async def test_second_run_makes_no_registry_request(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, fault_proxy: Any) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    img = await push_app_image(image_factory, proxy, repo_name, busybox_tree)
    proxy.log.clear()
    await snapfs_cli.ok("run", "--rm", "-q", str(img.ref), "true")
    assert any("/blobs/" in path for _, path, _ in proxy.log)
    proxy.log.clear()
    out = await snapfs_cli.ok("run", "--rm", "-q", str(img.ref), "echo", "again")
    assert out == "again\n"
    assert proxy.log == []
    # Also by digest, which the image table has under its tag only.
    by_digest = f"{proxy.host}/{repo_name}@{img.image.digest}"
    assert await snapfs_cli.ok("run", "--rm", "-q", by_digest, "echo", "pinned") == "pinned\n"
    assert proxy.log == []


# -- killed runs leave nothing behind ----------------------------------------------------------


def _leftovers(cli: SnapfsCli) -> dict[str, Any]:
    bundles = cli.state / "bundles"
    containers = cli.state / "containers"
    return {
        "mounts": mounts_under(cli.state),
        "bundles": sorted(p.name for p in bundles.iterdir()) if bundles.is_dir() else [],
        "containers": sorted(p.name for p in containers.iterdir()) if containers.is_dir() else [],
    }


async def start_sleeper(cli: SnapfsCli, ref: str, out: Path, *extra: str) -> trio.Process:
    with out.open("wb") as f:
        proc = await cli.start("run", *extra, "-q", ref, "sh", "-c", "echo ready; exec sleep 100",
                               stdout=f.fileno())
    with trio.fail_after(WAIT):
        while "ready" not in out.read_text():
            assert proc.poll() is None, "snapfs run exited early"
            await trio.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_killed_run_leaves_nothing_behind(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path, sig: int) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    proc = await start_sleeper(snapfs_cli, str(img.ref), tmp_path / "out", "--rm",
                                "--stop-timeout", "1")
    assert [c["status"] for c in await snapfs_cli.runc().list()] == ["running"]
    proc.send_signal(sig)
    with trio.fail_after(WAIT):
        status = await proc.wait()
    if sig == signal.SIGTERM:
        # Forwarded to the container; `sleep` as pid 1 ignores it, so after the stop timeout
        # snapfs kills it, cleans up itself and exits as a SIGTERM-ed process would.
        assert status == 128 + signal.SIGTERM
        assert _leftovers(snapfs_cli) == {"mounts": [], "bundles": [], "containers": []}
    else:
        assert status == -signal.SIGKILL
        assert _leftovers(snapfs_cli)["mounts"] != []
    # The next command, whatever it is, cleans up after the killed one.
    await snapfs_cli.ok("images")
    assert await snapfs_cli.runc().list() == []
    assert _leftovers(snapfs_cli) == {"mounts": [], "bundles": [], "containers": []}
    assert run_snapshots(await snapfs_cli.snapshots()) == []


# -- bad input: one line, exit 125 -------------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown image", "bad reference", "no command", "unknown user"])
async def test_bad_input_fails_with_one_line(
        embedded_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, case: str) -> None:
    no_cmd = await image_factory.push(registry, repo_name, [busybox_tree], config={})
    args = {
        "unknown image": [f"{registry.host}/{repo_name}-missing:1", "true"],
        "bad reference": ["UPPER/case", "true"],
        "no command": [str(no_cmd.ref)],
        "unknown user": ["-u", "ghost", str(no_cmd.ref), "true"],
    }[case]
    res = await embedded_cli("run", "--rm", "-q", *args)
    assert res.status == EXIT_SNAPFS_ERROR
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapfs: "), res.stderr
    expect = {"unknown image": "not found", "bad reference": "invalid reference",
              "no command": "no command", "unknown user": "ghost"}[case]
    assert expect in lines[0]
    assert _leftovers(embedded_cli)["mounts"] == []
