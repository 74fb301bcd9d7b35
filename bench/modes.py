"""Ways of getting from "pull" to a running workload; each is measured the same way.

A mode is a small object with ``prepare`` (raises ContentError with the reason when its
prerequisites are missing: the mode is then reported "unavailable", never dropped or faked),
``open_env`` (a fresh environment for one cold repetition: daemons with empty roots, started
in order, stopped by PID), ``measure_io`` (optional read throughput) and its ``hot`` flag.

One repetition of a mode runs one *job* in a fresh environment and yields one sample per
workload (see :func:`run_job`)::

    job "start"     drop caches, pull, run the start workload    → start         (pull → line)
                    run it again at once                          → second-start  (run → line)
                    [native, hot] everything local, drop caches,
                    run it in a fresh container                   → start-local   (run → line)
    job "read-usr"  drop caches, pull, read every file under /usr → read-usr      (pull → line)
                    [native, hot] local, drop caches, read again  → read-usr-local (run → line)

"Local" is what the mode has after its pull: containerd's overlayfs has every layer unpacked;
the hot snapfs mode polls ``snapfs status --json`` until its background fetch has made every
lazy layer ``local`` (never a native pre-pull).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from bench.containerd import Containerd, Proxy, need_binaries, open_containerd, pull_args
from bench.images import ImageSpec
from bench.link import ShapedLink
from bench.measure import Sample, drop_caches, io_cold_and_warm, run_to_first_line
from bench.stargz import PROXY_NAME as STARGZ
from bench.stargz import build_stargz_sync, open_stargz_daemon
from content.errors import FailedPrecondition, Unavailable
from snapfs.sys import mountinfo

JOBS: Mapping[str, tuple[str, ...]] = {
    "start": ("start", "second-start", "start-local"),
    "read-usr": ("read-usr", "read-usr-local"),
}
WORKLOADS = tuple(w for ws in JOBS.values() for w in ws)
LOCAL_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Target:
    """One image as the modes see it: refs through the shaped link, by variant tag."""

    image: ImageSpec
    refs: Mapping[str, str]  # variant → "127.0.0.1:PORT/bench/<name>:<variant>"
    chain_ids: Mapping[str, str]  # variant → chain ID of the top layer
    link: ShapedLink
    scratch: Path  # short path: containerd's socket must fit in sun_path
    big_file: str  # the sequential-read subject, relative to the rootfs

    @property
    def walk_dir(self) -> str:
        return "usr"


class Env(Protocol):
    """One repetition's environment: the client commands, and what the daemon can tell."""

    def pull_cmd(self, ref: str) -> list[str]: ...
    def run_cmd(self, ref: str, name: str, argv: Sequence[str]) -> list[str]: ...
    async def wait_local(self) -> None: ...
    async def fetch_split(self) -> dict[str, Any] | None: ...


class Mode(Protocol):
    name: str
    variant: str  # the tag it pulls
    local_runs: bool  # measures the *-local workloads

    async def prepare(self, target: Target) -> None: ...
    def open_env(self, target: Target, base: Path) -> AbstractAsyncContextManager[Env]: ...
    async def measure_io(self, target: Target) -> dict[str, Any]: ...


async def run_job(mode: Mode, env: Env, target: Target, job: str, rep: int
                  ) -> dict[str, Sample]:
    """The job's samples, by workload (see the module docstring)."""
    ref = target.refs[mode.variant]
    argv = target.image.workload if job == "start" else target.image.read_workload
    out: dict[str, Sample] = {}
    await drop_caches()
    before = (await target.link.stats()).bytes_down
    start = trio.current_time()
    res = await trio.run_process(env.pull_cmd(ref), capture_stdout=True, capture_stderr=True,
                                 check=False)
    if res.returncode != 0:
        raise Unavailable(f"pull {ref} exited {res.returncode}: "
                          f"{res.stderr.decode(errors='replace').strip()[-400:]}")
    pulled = trio.current_time()

    async def timed(workload: str, n: int, local_s: float | None = None) -> None:
        run_start = trio.current_time()
        first = await run_to_first_line(env.run_cmd(ref, f"bench-{rep}-{n}", argv))
        after = (await target.link.stats()).bytes_down
        cold = workload in ("start", "read-usr")
        run_s, ttfr_s = first.at - run_start, first.at - start
        out[workload] = Sample(
            time_s=ttfr_s if cold else run_s, pull_s=pulled - start, run_s=run_s,
            ttfr_s=ttfr_s, total_s=first.ended - start, bytes_fetched=after - before,
            first_line=first.line, fetch_split=await env.fetch_split(), local_s=local_s)

    await timed(job, 0)
    if job == "start":
        await timed("second-start", 1)
    if mode.local_runs:
        await env.wait_local()
        local_s = trio.current_time() - start
        await drop_caches()
        await timed(f"{job}-local", 2, local_s)
    return out


class ContainerdEnv:
    """``ctr`` (or ``ctr-remote``) against a private containerd, one snapshotter selected."""

    def __init__(self, cd: Containerd, snapshotter: str | None, puller: str | None) -> None:
        self.cd = cd
        self.snapshotter = snapshotter
        self.puller = puller  # ctr-remote's path for rpull, None for plain ``ctr image pull``

    def _sn(self) -> list[str]:
        return ["--snapshotter", self.snapshotter] if self.snapshotter else []

    def pull_cmd(self, ref: str) -> list[str]:
        if self.puller is None:
            return self.cd.ctr_cmd(*pull_args(ref, self._sn()))
        return self.cd.ctr_cmd("image", "rpull", "--plain-http", *self._sn(), ref,
                               binary=self.puller)

    def run_cmd(self, ref: str, name: str, argv: Sequence[str]) -> list[str]:
        return self.cd.ctr_cmd("run", "--rm", *self._sn(), ref, name, *argv)

    async def wait_local(self) -> None:
        return None  # overlayfs unpacked every layer during the pull

    async def fetch_split(self) -> dict[str, Any] | None:
        return None


def fuse_mounts_under(base: Path) -> int:
    """How many FUSE filesystems are mounted at or below ``base`` (from mountinfo)."""
    return sum(1 for e in mountinfo.read() if e.fstype.startswith("fuse")
               and (e.mount_point + "/").startswith(f"{base}/"))


class StargzEnv(ContainerdEnv):
    """What stargz-snapshotter can tell without its metrics: whether it mounted lazily."""

    def __init__(self, base: Path, *args: Any) -> None:
        super().__init__(*args)
        self.base = base

    async def fetch_split(self) -> dict[str, Any] | None:
        return {"fuse_mounts": fuse_mounts_under(self.base)}


class ContainerdNative:
    """containerd's own overlayfs snapshotter: ``ctr image pull`` + ``ctr run``."""

    name = "containerd-overlayfs"
    variant = "gzip"
    local_runs = True

    async def prepare(self, target: Target) -> None:
        if os.geteuid() != 0:
            raise FailedPrecondition("containerd needs root")
        async with open_containerd(target.scratch / "probe") as cd:
            await cd.ctr("version")

    @asynccontextmanager
    async def open_env(self, target: Target, base: Path) -> AsyncIterator[Env]:
        async with open_containerd(base / "ctd") as cd:
            yield ContainerdEnv(cd, None, None)

    async def measure_io(self, target: Target) -> dict[str, Any]:
        ref = target.refs[self.variant]
        async with open_containerd(target.scratch / "io") as cd:
            await cd.ctr(*pull_args(ref))
            res = await cd.ctr("snapshots", "view", "--mounts", "bench-io",
                               target.chain_ids[self.variant])
            mountpoint = Path(tempfile.mkdtemp(prefix="io-", dir=target.scratch))
            await mount_json_mounts(json.loads(res.stdout), mountpoint)
            try:
                return {"native-overlayfs": await io_cold_and_warm(
                    mountpoint, target.big_file, target.walk_dir)}
            finally:
                with trio.CancelScope(shield=True):
                    await unmount(mountpoint)
                    mountpoint.rmdir()


class StargzMode:
    """containerd-stargz-grpc (stargz-snapshotter's library, Debian's sources, default
    config: prefetch and background fetch on) as containerd's proxy snapshotter ``stargz``:
    ``ctr-remote image rpull --snapshotter stargz`` + ``ctr run --snapshotter stargz``."""

    local_runs = False

    def __init__(self, name: str, variant: str) -> None:
        self.name = name
        self.variant = variant
        self.binary: Path | None = None
        self.ctr_remote = ""

    async def prepare(self, target: Target) -> None:
        if os.geteuid() != 0:
            raise FailedPrecondition("containerd needs root")
        [self.ctr_remote] = need_binaries("ctr-remote")
        if self.variant not in target.refs:
            raise Unavailable(f"no {self.variant} image")
        self.binary = await trio.to_thread.run_sync(build_stargz_sync)

    @asynccontextmanager
    async def open_env(self, target: Target, base: Path) -> AsyncIterator[Env]:
        assert self.binary is not None
        base.mkdir(parents=True, exist_ok=True)
        async with open_stargz_daemon(self.binary, base / "sgz") as d, \
                open_containerd(base / "ctd", Proxy(STARGZ, d.address)) as cd:
            yield StargzEnv(d.base, cd, STARGZ, self.ctr_remote)

    async def measure_io(self, target: Target) -> dict[str, Any]:
        raise Unavailable("no read-throughput measure for stargz-snapshotter")


async def mount_json_mounts(mounts: list[dict[str, Any]], target: Path) -> None:
    """Mount what a snapshotter returned (one mount: bind or overlay) at ``target``."""
    if len(mounts) != 1:
        raise FailedPrecondition(f"view gave {len(mounts)} mounts; the bench mounts one")
    m = mounts[0]
    opts = ",".join(m.get("options") or m.get("Options") or [])
    kind = m.get("type") or m.get("Type")
    source = m.get("source") or m.get("Source")
    cmd = ["mount", "-t", str(kind), *(["-o", opts] if opts else []), str(source), str(target)]
    res = await trio.run_process(cmd, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise Unavailable(f"mounting the view at {target}: {res.stderr.decode().strip()}")


async def unmount(target: Path) -> None:
    await trio.run_process(["umount", str(target)], check=False, capture_stderr=True)


def probe_help(cmd: list[str]) -> str:
    """The ``--help`` text of a command, or raise Unavailable with why it failed."""
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise Unavailable(f"{' '.join(cmd[-1:])} --help failed: {tail}")
    return res.stdout
