"""docker-shaped ``snapfs run`` and friends against real runc, embedded and through a daemon:
``run -d`` + ``logs``/``stop``/``kill``/``exec``/``rm -f``, ``-i``, ``-e NAME``,
``--env-file``, docker's exit codes for a command that cannot run, and each command's own
usage on a wrong flag. Statuses and signals are asserted, never times.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from runtime.bundle import Owner, owner_alive
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import (
    SNAPFS,
    WAIT,
    SnapfsCli,
    _leftovers,
    push_app_image,
    run_snapshots,
)

short_dir = test_cli_run.short_dir
_snapfs_cli = test_cli_run.snapfs_cli

TRAP = 'trap "echo bye; exit 3" TERM; echo up; while true; do sleep 0.1; done'


@pytest.fixture
async def cli(_snapfs_cli: SnapfsCli) -> AsyncIterator[SnapfsCli]:
    """snapfs_cli, plus: supervisors of detached containers a test left are stopped."""
    try:
        yield _snapfs_cli
    finally:
        with trio.CancelScope(shield=True):
            for rec in _records(_snapfs_cli):
                owner = Owner(rec["owner"]["pid"], rec["owner"]["start"])
                if rec["finished"] is None and owner_alive(owner):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(owner.pid, signal.SIGKILL)  # a supervisor this test started


def _records(cli: SnapfsCli) -> list[dict[str, object]]:
    out = []
    for path in (cli.state / "containers").glob("*/record.json"):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


async def _image(image_factory: ImageFactory, registry: RegistryServer, repo: str,
                 busybox_tree: Path) -> str:
    return str((await push_app_image(image_factory, registry, repo, busybox_tree)).ref)


async def _ps(cli: SnapfsCli) -> dict[str, dict[str, object]]:
    return {r["id"]: r for r in json.loads(await cli.ok("ps", "-a", "--json"))}


async def _wait_log(cli: SnapfsCli, cid: str, text: str) -> str:
    with trio.fail_after(WAIT):
        while text not in (out := await cli.ok("logs", cid)):
            await trio.sleep(0.05)
    return out


async def test_detached_container_logs_exec_and_stop(
        cli: SnapfsCli, registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path) -> None:
    ref = await _image(image_factory, registry, repo_name, busybox_tree)
    cid = (await cli.ok("run", "-d", "-q", "--name", "bg", ref, "sh", "-c",
                        "echo hello; echo oops >&2; exec sleep 1000")).strip()
    assert len(cid) == 16
    # It keeps running after `snapfs run -d` returned, its output in its log.
    assert (await _ps(cli))[cid]["status"] == "running"
    out = await _wait_log(cli, "bg", "oops")
    assert out.splitlines() == ["hello", "oops"]
    res = await cli("exec", "bg", "sh", "-c", "echo in $(hostname); exit 4")
    assert (res.status, res.stdout) == (4, "in snapfs\n"), res.stderr
    # sleep as pid 1 ignores SIGTERM: stop kills it after its timeout.
    assert (await cli.ok("stop", "-t", "1", "bg")).strip() == cid
    rec = (await _ps(cli))[cid]
    assert (rec["status"], rec["exit_code"]) == ("exited", 128 + signal.SIGKILL)
    assert await cli.runc().list() == []
    res = await cli("exec", "bg", "true")
    assert res.status == 125 and "not running" in res.stderr
    await cli.ok("rm", "bg")
    assert _leftovers(cli) == {"mounts": [], "bundles": [], "containers": []}


async def test_stop_lets_a_container_exit_by_its_stop_signal(
        cli: SnapfsCli, registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path) -> None:
    ref = await _image(image_factory, registry, repo_name, busybox_tree)
    cid = (await cli.ok("run", "-d", "-q", ref, "sh", "-c", TRAP)).strip()
    await _wait_log(cli, cid, "up")
    await cli.ok("stop", "-t", "60", cid)
    assert (await _ps(cli))[cid]["exit_code"] == 3  # its TERM handler ran, not SIGKILL
    assert (await cli.ok("logs", cid)).splitlines() == ["up", "bye"]
    # kill: SIGKILL by default, or the signal asked for.
    cid = (await cli.ok("run", "-d", "-q", ref, "sh", "-c", TRAP)).strip()
    await _wait_log(cli, cid, "up")
    await cli.ok("kill", "-s", "TERM", cid)
    with trio.fail_after(WAIT):
        while (await _ps(cli))[cid]["status"] == "running":
            await trio.sleep(0.05)
    assert (await _ps(cli))[cid]["exit_code"] == 3


async def test_rm_f_removes_a_running_container(
        cli: SnapfsCli, registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path) -> None:
    ref = await _image(image_factory, registry, repo_name, busybox_tree)
    kept = (await cli.ok("run", "-d", "-q", ref, "sleep", "1000")).strip()
    gone = (await cli.ok("run", "-d", "-q", "--rm", ref, "sleep", "1000")).strip()
    res = await cli("rm", kept)
    assert res.status == 125 and "still running" in res.stderr
    assert (await cli.ok("rm", "-f", kept, gone)).split() == [kept, gone]
    assert await _ps(cli) == {}
    assert await cli.runc().list() == []
    assert run_snapshots(await cli.snapshots()) == []
    assert _leftovers(cli) == {"mounts": [], "bundles": [], "containers": []}


async def test_env_from_the_host_and_env_files(
        cli: SnapfsCli, registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = await _image(image_factory, registry, repo_name, busybox_tree)
    monkeypatch.setenv("SNAPFS_T_HOST", "from host")
    monkeypatch.delenv("SNAPFS_T_UNSET", raising=False)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nFILE_A=a b\nFILE_B=file\nSNAPFS_T_HOST\n")
    out = await cli.ok("run", "--rm", "-q", "--env-file", str(env_file), "-e", "FILE_B=flag",
                       "-e", "SNAPFS_T_UNSET", ref, "sh", "-c",
                       'echo "$SNAPFS_T_HOST|$FILE_A|$FILE_B|${SNAPFS_T_UNSET-unset}"')
    assert out == "from host|a b|flag|unset\n"
    res = await cli("run", "--rm", "-q", "--env-file", str(tmp_path / "missing"), ref, "true")
    assert res.status == 125 and len(res.stderr.splitlines()) == 1


async def test_stdin_only_with_i(cli: SnapfsCli, registry: RegistryServer, repo_name: str,
                                 image_factory: ImageFactory, busybox_tree: Path) -> None:
    ref = await _image(image_factory, registry, repo_name, busybox_tree)

    async def run(*flags: str) -> str:
        with trio.fail_after(WAIT):
            proc = await trio.run_process(cli.argv("run", "--rm", "-q", *flags, ref, "cat"),
                                          stdin=b"typed\n", capture_stdout=True, check=True)
        return proc.stdout.decode()

    assert await run("-i") == "typed\n"
    assert await run() == ""


@pytest.mark.parametrize(("command", "status", "says"), [
    ("nope", 127, "executable file not found"),
    ("/bin/nope", 127, "no such file"),
    ("/etc/passwd", 126, "permission denied"),
])
async def test_a_command_that_cannot_run_fails_in_one_line(
        cli: SnapfsCli, registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path, command: str, status: int, says: str) -> None:
    ref = await _image(image_factory, registry, repo_name, busybox_tree)
    # Pulled first: what a pull may log (the lazy path's warnings) is not the run's error.
    await cli.ok("pull", "-q", ref)
    for args in (["run", "--rm", "-q", ref, command], ["run", "-d", "-q", "--rm", ref, command]):
        res = await cli(*args)
        lines = res.stderr.splitlines()
        assert res.status == status, res.stderr
        assert len(lines) == 1 and lines[0].startswith("snapfs: ") and says in lines[0]
    cid = (await cli.ok("run", "-d", "-q", "--rm", ref, "sleep", "1000")).strip()
    res = await cli("exec", cid, command)
    assert res.status == status and says in res.stderr
    await cli.ok("rm", "-f", cid)
    assert _leftovers(cli) == {"mounts": [], "bundles": [], "containers": []}


@pytest.mark.parametrize("command", ["run", "exec", "ps", "logs", "stop", "images"])
def test_a_wrong_flag_prints_the_commands_own_usage(command: str) -> None:
    proc = subprocess.run([str(SNAPFS), command, "--bogus", "x"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"usage: snapfs {command} ")
    assert f"snapfs {command}: error: unrecognized arguments: --bogus" in proc.stderr


def test_log_level_is_accepted_after_any_command(tmp_path: Path) -> None:
    proc = subprocess.run([str(SNAPFS), "ps", "--log-level", "debug", "--state",
                           str(tmp_path / "state"), "--root", str(tmp_path / "root")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("CONTAINER ID")
