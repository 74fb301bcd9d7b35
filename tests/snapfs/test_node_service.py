"""snapfs as a node service: sd_notify readiness, the pid-file lock, and scripts/install.

The readiness test starts a real ``snapfs serve`` with ``NOTIFY_SOCKET`` pointing at a
datagram socket of its own (an abstract address, as systemd may pass), and checks the gRPC
socket the moment ``READY=1`` arrives. The install test installs into a temp prefix and runs
``systemd-analyze verify`` on the unit it put there; nothing is started or enabled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from snapfs.sys.mountops import detach_all_under
from snapfs.sys.notify import notify_address, sd_notify
from snapfs.sys.pidfile import AlreadyLocked, lock_pidfiles, read_pid
from tests.fixtures.daemon import SNAPFS, SnapfsDaemon, socket_accepts
from tests.fixtures.realenv import need, need_binary

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0


# -- sd_notify ----------------------------------------------------------------------------------

def test_notify_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("vsock:2:1234") is None


def test_sd_notify_sends_one_datagram_to_a_path_or_an_abstract_socket(tmp_path: Path) -> None:
    assert not sd_notify("READY=1", environ={})  # not under a service manager: nothing
    for value in (str(tmp_path / "notify"), f"@snapfs-test-{uuid.uuid4().hex}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
            rx.bind(notify_address(value))
            assert sd_notify("READY=1", "STATUS=x", environ={"NOTIFY_SOCKET": value})
            assert rx.recv(4096) == b"READY=1\nSTATUS=x"
    # A manager that went away is not the daemon's failure.
    assert not sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})


@asynccontextmanager
async def serve_with_notify(tmp_path: Path, sock_dir: Path,
                            ) -> AsyncIterator[tuple[trio.Process, trio.socket.SocketType, Path]]:
    need(SNAPFS.exists(), f"{SNAPFS} (run scripts/setup)")
    name = f"@snapfs-test-{uuid.uuid4().hex}"
    rx = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await rx.bind(notify_address(name))
    address = sock_dir / "snapfs.sock"
    root = tmp_path / "root"
    log = tmp_path / "snapfs.log"
    argv = [str(SNAPFS), "serve", "--root", str(root), "--state", str(sock_dir / "state"),
            "--address", str(address), "--metrics-address", "", "--log-level", "debug"]
    with open(log, "ab") as out:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            env={**os.environ, "NOTIFY_SOCKET": name})
    try:
        yield proc, rx, address
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            rx.close()
            await trio.to_thread.run_sync(detach_all_under, root)


async def test_ready_only_once_the_socket_answers_and_stopping_on_sigterm(
        tmp_path: Path, sock_dir: Path) -> None:
    async with serve_with_notify(tmp_path, sock_dir) as (proc, rx, address):
        with trio.fail_after(WAIT):
            first = await rx.recv(4096)
        # Checked now, before anything else: READY=1 must mean "accepts connections".
        accepting = socket_accepts(address)
        assert first.split(b"\n")[0] == b"READY=1"
        assert accepting, f"READY=1 arrived but {address} refused a connection"
        assert f"STATUS=serving on {address}".encode() in first.split(b"\n")
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            second = await rx.recv(4096)
            code = await proc.wait()
        assert second.split(b"\n")[0] == b"STOPPING=1"
        assert code == 0
        assert not address.exists()


# -- one daemon per root, state dir and socket --------------------------------------------------

def test_pidfile_lock_names_the_holder_and_is_released(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pid", tmp_path / "b.pid"
    with lock_pidfiles([a, b, a]):
        assert read_pid(a) == read_pid(b) == os.getpid()
        # A second holder (another open file description) is refused, naming the holder;
        # the one it got before the refusal is given back.
        with pytest.raises(AlreadyLocked) as refused:
            lock_pidfiles([tmp_path / "c.pid", b])
        assert (refused.value.path, refused.value.pid) == (b, os.getpid())
        with lock_pidfiles([tmp_path / "c.pid"]):
            pass
    assert a.exists() and read_pid(a) is None  # emptied, not removed
    with lock_pidfiles([a, b]):
        pass


@pytest.mark.parametrize("shared", ["root", "state", "socket"])
async def test_a_second_daemon_refuses_in_one_line_and_leaves_the_first_alone(
        snapfs_daemon: SnapfsDaemon, tmp_path: Path, sock_dir: Path, shared: str) -> None:
    other = {"root": tmp_path / "other-root", "state": sock_dir / "other-state",
             "address": sock_dir / "other.sock"}
    held = {"root": snapfs_daemon.root / "snapfs.pid",
            "state": snapfs_daemon.state / "snapfs.pid",
            "socket": snapfs_daemon.address.with_name("snapfs.sock.pid")}[shared]
    if shared == "socket":
        other["address"] = snapfs_daemon.address
    else:
        other[shared] = getattr(snapfs_daemon, shared)
    status_sock = snapfs_daemon.state / "status.sock"
    assert status_sock.exists()
    result = await trio.run_process(
        [str(SNAPFS), "serve", "--root", str(other["root"]), "--state", str(other["state"]),
         "--address", str(other["address"]), "--metrics-address", ""],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 125
    assert result.stderr.decode().splitlines() == [
        f"snapfs: another snapfs daemon (pid {snapfs_daemon.pid}) holds {held}; not starting"]
    # The first one is untouched: its sockets, its pid file, and it serves.
    assert status_sock.exists() and snapfs_daemon.address.exists()
    assert read_pid(held) == snapfs_daemon.pid
    async with snapfs_daemon.client() as c:
        assert await c.list() == []


async def test_a_daemon_killed_with_sigkill_leaves_nothing_that_blocks_a_restart(
        snapfs_daemon: SnapfsDaemon) -> None:
    first = snapfs_daemon.pid
    await snapfs_daemon.stop(kill=True)
    assert read_pid(snapfs_daemon.root / "snapfs.pid") == first  # stale, but unlocked
    await snapfs_daemon.start()
    assert read_pid(snapfs_daemon.root / "snapfs.pid") == snapfs_daemon.pid


# -- scripts/install ----------------------------------------------------------------------------

def test_install_into_a_prefix_gives_a_unit_systemd_accepts(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    prefix = tmp_path / "prefix"
    res = subprocess.run([str(REPO / "scripts" / "install"), "--prefix", str(prefix)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "nothing was started" in res.stdout
    launcher = prefix / "bin" / "snapfs"
    unit = prefix / "etc" / "systemd" / "system" / "snapfs.service"
    config = prefix / "etc" / "snapfs" / "config.toml"
    assert launcher.resolve() == (REPO / ".venv" / "bin" / "snapfs").resolve()
    version = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version.startswith("snapfs ")
    assert config.read_text() == (REPO / "contrib" / "config.toml").read_text()
    text = unit.read_text()
    lines = set(text.splitlines())
    assert f"ExecStart={launcher} serve --config {config}" in lines
    doc = next(line for line in lines if line.startswith("Documentation="))
    assert Path(doc.removeprefix("Documentation=file://")).is_file()
    for want in ("Type=notify", "KillMode=process", "OOMScoreAdjust=-999",
                 "Before=containerd.service", "LimitNOFILE=infinity"):
        assert want in lines, want
    # What the unit claims is what KillMode=process provides: the FUSE server, in its own
    # session, outlives a restart of the daemon (tests/snapfs/test_fuse_server*.py).
    assert "fuse-server" in text and "outlive it" in text
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            check=False)
    # Only our unit's findings count; systemd reports on the host's other units too.
    ours = [line for line in (verify.stdout + verify.stderr).splitlines()
            if "snapfs" in line]
    assert ours == [], "\n".join(ours)

    # A second install keeps an edited config, and still changes no service.
    config.write_text("# mine\n")
    again = subprocess.run([str(REPO / "scripts" / "install"), "--prefix", str(prefix)],
                           capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# mine\n"
