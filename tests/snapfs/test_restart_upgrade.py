"""An upgrade of snapfs while a ``snapfs fuse-server`` of the previous build runs (issue #12
item 3, the step done so far): the server says its build in hello; a client of another build
replaces it when it serves no layer, and otherwise keeps using it (same protocol), naming
both builds, while the old server's containers go on reading.

The "previous build" is a real one: a copy of the ``snapfs`` and ``content`` packages with
one source file changed, put first on ``PYTHONPATH`` of the processes that run it (started
outside the checkout: ``python -c`` puts the working directory first).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import trio

import content
import snapfs
from snapfs.lazy import frames
from snapfs.lazy.build import code_build
from tests.fixtures.daemon import fuse_server_pid
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import WAIT, SnapfsCli
from tests.snapfs.test_cli_status import push_estargz
from tests.snapfs.test_concurrency import wait_for_file
from tests.snapfs.test_gc import configure

embedded_cli = test_cli_run.embedded_cli
short_dir = test_cli_run.short_dir


def older_build(dest: Path) -> dict[str, str]:
    """A copy of the code with one change; the environment that runs it."""
    for package in (snapfs, content):
        src = Path(package.__file__ or "").parent
        shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    with (dest / "snapfs" / "lazy" / "fuse_server.py").open("a") as f:
        f.write("# the previous build\n")
    return {**os.environ, "PYTHONPATH": str(dest)}


async def hello(state: Path) -> frames.Header | None:
    try:
        stream = await trio.open_unix_socket(str(state / "fuse-server.sock"))
    except OSError:
        return None
    async with stream:
        await frames.send(stream, {"op": "hello"})
        reply = await frames.receive(stream)
    return None if reply is None else reply[0]


async def wait_for_server(state: Path) -> frames.Header:
    with trio.fail_after(WAIT):
        while (found := await hello(state)) is None:
            await trio.sleep(0.05)
    return found


async def test_an_idle_server_of_another_build_is_replaced(
        embedded_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    cli = embedded_cli
    _, esgz = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    env = older_build(tmp_path / "old")
    cli.state.mkdir(parents=True, exist_ok=True)
    # As a daemon of the previous build left it: running, serving no layer.
    old = await trio.lowlevel.open_process(
        [sys.executable, "-c", "from snapfs.cli import console_main; console_main()",
         "fuse-server", "--root", str(cli.root.absolute()), "--state", str(cli.state)],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    cli.procs.append(old)
    was = await wait_for_server(cli.state)
    assert was["pid"] == old.pid and was["build"] not in ("", code_build())

    assert await cli.ok("run", "--rm", "-q", str(esgz), "cat", "/app/a") == "first\n"
    with trio.fail_after(WAIT):
        assert await old.wait() == 0  # it exited, asked to (it served nothing)
    log = (cli.state / "fuse-server.log").read_text()
    servers = set(re.findall(r"fuse server (\d+): serving ", log))
    assert servers and str(old.pid) not in servers  # the layers went to one of this build


async def test_a_busy_server_of_another_build_keeps_serving(
        embedded_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    cli = embedded_cli
    _, esgz = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    env = older_build(tmp_path / "old")
    # Layers stay lazy (not completed by the first command), so the second needs the mount.
    flags = await configure(cli, tmp_path, "[fetch]\nbackground = false\n")
    x = tmp_path / "x"
    x.mkdir()
    # A command of the previous build: its container runs on a server of that build.
    a = await trio.lowlevel.open_process(
        cli.argv("run", "--rm", "-q", *flags, "-v", f"{x}:/x", str(esgz), "sh", "-c",
                 "echo >/x/ready; while [ ! -e /x/stop ]; do sleep 0.1; done; cat /app/a "
                 ">/x/out"),
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    cli.procs.append(a)
    await wait_for_file(x / "ready")
    was = await wait_for_server(cli.state)
    assert was["build"] != code_build() and was["layers"]

    # A command of this build uses it (it may not take its mount away) and says so.
    res = await cli("run", "--rm", *flags, str(esgz), "cat", "/app/a")
    assert (res.status, res.stdout) == (0, "first\n"), res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "runs build" in ln]
    assert warned and was["build"] in warned[0] and code_build() in warned[0], res.stderr
    assert fuse_server_pid(cli.state) == was["pid"]

    (x / "stop").touch()
    with trio.fail_after(WAIT):
        assert await a.wait() == 0
    assert (x / "out").read_text() == "first\n"
