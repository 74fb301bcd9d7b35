"""``snapfs serve`` as a user runs it: a real process, its socket, signals and metrics."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import trio

from snapfs.client.snapshots import open_client
from snapfs.config import default_config, with_overrides
from snapfs.daemon.daemon import DaemonStatus, serve_daemon
from snapfs.errors import NotFound
from snapfs.snapshot.types import Info, Kind, Snapshots
from tests.fixtures.daemon import SNAPFS, SnapfsDaemon, free_port
from tests.snapfs.test_service import MemorySnapshots


async def test_snapshots_round_trip_through_the_daemon(snapfs_daemon: SnapfsDaemon) -> None:
    async with snapfs_daemon.client() as c:
        base = await c.prepare("base", labels={"containerd.io/snapshot/x": "1"})
        assert base[0].type == "bind"
        base_dir = Path(base[0].source)
        assert base_dir.is_relative_to(snapfs_daemon.root) and base_dir.is_dir()
        (base_dir / "hello").write_text("hi")
        await c.commit("base-c", "base")
        child = await c.prepare("child", "base-c")
        assert child == await c.mounts("child")
        info = await c.stat("child")
        assert (info.parent, info.kind) == ("base-c", Kind.ACTIVE)
        assert (await c.usage("base-c")).size == 2
        assert {i.name for i in await c.list()} == {"base-c", "child"}
        await c.remove("child")
        await c.remove("base-c")
        try:
            await c.stat("base-c")
            raise AssertionError("removed snapshot still there")
        except NotFound:
            pass
        await c.cleanup()


async def test_socket_mode_is_0660(snapfs_daemon: SnapfsDaemon) -> None:
    assert stat.S_IMODE(os.stat(snapfs_daemon.address).st_mode) == 0o660


async def test_sigterm_stops_cleanly_and_removes_the_socket(snapfs_daemon: SnapfsDaemon) -> None:
    os.kill(snapfs_daemon.pid, signal.SIGTERM)
    code = await snapfs_daemon.stop()  # waits; SIGKILL only if SIGTERM did not work
    assert code == 0
    assert not snapfs_daemon.address.exists()
    assert "stopped" in snapfs_daemon.log_tail()


async def test_stale_socket_after_kill_is_replaced(snapfs_daemon: SnapfsDaemon) -> None:
    async with snapfs_daemon.client() as c:
        await c.prepare("a")
    await snapfs_daemon.stop(kill=True)
    assert snapfs_daemon.address.exists()  # SIGKILL leaves the socket behind
    await snapfs_daemon.start()
    async with snapfs_daemon.client() as c:
        assert [i.name for i in await c.list()] == ["a"]


async def test_explicit_missing_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = await trio.run_process(
        [str(SNAPFS), "serve", "--config", str(tmp_path / "none.toml")],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"snapfs serve: {tmp_path / 'none.toml'}: config file not found"
    ]


async def test_metrics_endpoint_serves_counters(snapfs_daemon: SnapfsDaemon) -> None:
    async with snapfs_daemon.client() as c:
        await c.prepare("a")
        await c.view("v")
        for _ in range(2):
            with suppress(NotFound):
                await c.stat("missing")
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"http://{snapfs_daemon.metrics_address}/metrics")
    assert resp.status_code == 200
    lines = set(resp.text.splitlines())
    assert 'snapfs_grpc_requests_total{code="OK",method="Prepare"} 1.0' in lines
    assert 'snapfs_grpc_errors_total{code="NOT_FOUND",method="Stat"} 2.0' in lines
    assert 'snapfs_grpc_request_duration_seconds_count{method="Stat"} 2.0' in lines
    assert 'snapfs_snapshots{kind="active"} 1.0' in lines
    assert 'snapfs_snapshots{kind="view"} 1.0' in lines
    assert 'snapfs_snapshots{kind="committed"} 0.0' in lines


class RecordingSnapshots(MemorySnapshots):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    async def stat(self, key: str) -> Info:
        info = await super().stat(key)
        self.events.append(f"stat {key} done")
        return info


async def test_in_process_daemon_drains_calls_then_closes_the_snapshotter(
    sock_dir: Path,
) -> None:
    events: list[str] = []
    mem = RecordingSnapshots(events)

    @asynccontextmanager
    async def open_mem(_: object, _credentials: object) -> AsyncIterator[Snapshots]:
        try:
            yield mem
        finally:
            events.append("closed")

    config = with_overrides(
        default_config(rootless=False), root=str(sock_dir / "root"), state=str(sock_dir / "st"),
        address=str(sock_dir / "d.sock"), metrics_address=f"127.0.0.1:{free_port()}",
    )
    await mem.prepare("a")
    mem.gate = trio.Event()
    got: list[Info] = []
    async with trio.open_nursery() as outer:
        daemon_scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[DaemonStatus]) -> None:
            with daemon_scope:
                await serve_daemon(config, open_snapshots=open_mem, task_status=task_status)

        status: DaemonStatus = await outer.start(run)
        assert status.socket == sock_dir / "d.sock"
        assert status.metrics is not None

        async def stat_a() -> None:
            async with open_client(str(status.socket)) as c:
                got.append(await c.stat("a"))

        outer.start_soon(stat_a)
        await mem.entered.wait()
        daemon_scope.cancel()  # as SIGTERM does: the daemon stops while stat is in flight
        await trio.sleep(0.05)  # let the stop begin; correctness does not depend on it
        mem.gate.set()
    assert [i.name for i in got] == ["a"]
    assert events == ["stat a done", "closed"]
    assert not (sock_dir / "d.sock").exists()


def test_serve_help_lists_every_flag() -> None:
    out = subprocess.run([str(SNAPFS), "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--config", "--root", "--state", "--address", "--metrics-address",
                 "--log-level"):
        assert flag in out
