"""A private containerd 1.6 for one cold repetition: its own root, state and sockets.

A fresh root per repetition is the most honest cold start: no content, no snapshots, no
metadata left from the previous pull (containerd's GC is asynchronous and would leave some).
The CRI plugin is disabled; the benchmark talks to it with ``ctr`` (and ``ctr-remote``) in
its own namespace. At most one proxy snapshotter is attached (``snapfs`` or ``stargz``); it
must already serve when containerd starts (containerd 1.6 dials proxy plugins at startup).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.procs import stop_process
from content.errors import FailedPrecondition, Unavailable
from snapfs.dev.containerd import containerd_config
from snapfs.sys.mountops import detach_all_under

NAMESPACE = "bench"


def need_binaries(*names: str) -> list[str]:
    paths = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            raise FailedPrecondition(f"binary {name!r} not found")
        paths.append(path)
    return paths


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy snapshotter plugin: the name ``--snapshotter`` selects, and its socket."""

    name: str
    socket: str


def write_config(base: Path, proxy: Proxy | None) -> Path:
    text = containerd_config(base)
    if proxy is not None:
        text += (f"[proxy_plugins.{proxy.name}]\n  type = \"snapshot\"\n"
                 f"  address = \"{proxy.socket}\"\n")
    path = base / "config.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True, slots=True)
class Containerd:
    base: Path
    address: str
    ctr_binary: str
    pid: int

    def ctr_cmd(self, *args: str, binary: str | None = None) -> list[str]:
        """``ctr`` (or ``binary``: ``ctr-remote`` takes the same global flags) on this one."""
        return [binary or self.ctr_binary, "--address", self.address, "--namespace", NAMESPACE,
                *args]

    async def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        res = await trio.run_process(self.ctr_cmd(*args), capture_stdout=True,
                                     capture_stderr=True, check=False)
        if check and res.returncode != 0:
            raise Unavailable(f"ctr {' '.join(args[:3])} exited {res.returncode}: "
                              f"{res.stderr.decode(errors='replace').strip()[-400:]}")
        return res


async def _answers(cd: Containerd) -> bool:
    return Path(cd.address).exists() and (await cd.ctr("version", check=False)).returncode == 0


async def _names(cd: Containerd, *args: str) -> list[str]:
    res = await cd.ctr(*args, check=False)
    return res.stdout.decode().split() if res.returncode == 0 else []


@asynccontextmanager
async def open_containerd(base: Path, proxy: Proxy | None = None, *,
                          startup_timeout: float = 30) -> AsyncIterator[Containerd]:
    """Start containerd under ``base`` (must be short: socket paths fit in 108 bytes); on
    exit remove our tasks and containers, stop it by PID, unmount and delete ``base``."""
    binary, ctr = need_binaries("containerd", "ctr")
    base.mkdir(parents=True, exist_ok=False)
    config = write_config(base, proxy)
    log = (base / "containerd.log").open("wb")
    proc = await trio.lowlevel.open_process([binary, "--config", str(config)], stdout=log,
                                            stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
    cd = Containerd(base, f"{base}/containerd.sock", ctr, proc.pid)
    try:
        with trio.move_on_after(startup_timeout) as scope:
            while True:
                if proc.poll() is not None:
                    raise Unavailable(f"containerd exited {proc.returncode}; see "
                                      f"{base}/containerd.log")
                if await _answers(cd):
                    break
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise Unavailable(f"containerd under {base} did not answer in {startup_timeout:.0f}s")
        yield cd
    finally:
        with trio.CancelScope(shield=True):
            await _stop(cd, proc)
            log.close()
            detach_all_under(base)
            await trio.to_thread.run_sync(shutil.rmtree, base, True)


async def _stop(cd: Containerd, proc: trio.Process) -> None:
    if proc.returncode is None:
        for task in await _names(cd, "tasks", "ls", "-q"):
            await cd.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            await cd.ctr("tasks", "delete", "--force", task, check=False)
        for c in await _names(cd, "containers", "ls", "-q"):
            await cd.ctr("containers", "delete", c, check=False)
        await stop_process(proc, grace=20)


def pull_args(ref: str, extra: Sequence[str] = ()) -> list[str]:
    """``ctr image pull`` on a loopback registry: plain HTTP, this platform only."""
    return ["image", "pull", "--plain-http", *extra, ref]
