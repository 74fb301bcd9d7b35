"""The snapfs modes, each against a private ``snapfs serve`` with a fresh root per repetition.

``snapfs-containerd-*``: as users run it, ``snapfs serve`` as containerd's proxy snapshotter
``snapfs`` (snapfs started first, containerd second), ``ctr-remote image rpull --snapshotter
snapfs --plain-http`` + ``ctr run --snapshotter snapfs``. ``snapfs-containerd-estargz-hot``
is the same with ``[fetch] background = true``, and also measures a fresh container once
``snapfs status --json`` says every lazy layer is ``local``.
``snapfs-containerd-estargz-published``: the plain eStargz image, not rebuilt, whose startup
profile an earlier node recorded and published (each repetition's fresh root finds it on the
pull). ``snapfs-run-*``: snapfs's own
CLI, ``snapfs pull`` + ``snapfs run`` (the daemon keeps lazy layers mounted between them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.containerd import Proxy, need_binaries, open_containerd
from bench.measure import io_cold_and_warm, run_checked
from bench.modes import (
    LOCAL_TIMEOUT,
    ContainerdEnv,
    Env,
    Target,
    mount_json_mounts,
    probe_help,
    unmount,
)
from bench.procs import stop_process
from content.errors import FailedPrecondition, Unavailable
from content.profilefile import parse_profile
from snapfs.sys.mountops import detach_all_under
from snapfs.sys.pidfile import read_pid

SNAPFS = str(Path(sys.executable).parent / "snapfs")
PROFILE_WAIT = 30.0  # seconds for a daemon's recording to be stored (record_seconds is 10)
PROXY_NAME = "snapfs"
BACKGROUND_CONFIG = "[fetch]\nbackground = true\n"  # the default; said explicitly
# What `snapfs status --json` may report per layer for the split; absent keys are noted.
SPLIT_KEYS = ("demand_bytes", "prefetch_bytes", "background_bytes",
              "demand_requests", "prefetch_requests", "background_requests",
              "window_chunks", "window_hits")


@dataclass(frozen=True, slots=True)
class SnapfsDaemon:
    base: Path
    address: str

    def cli(self, command: str, *args: str) -> list[str]:
        """``snapfs COMMAND --root … --state … --address … ARGS``; ``command`` may hold a
        subcommand (``"profile push"``), since the flags belong to the last word."""
        return [SNAPFS, *command.split(), "--root", f"{self.base}/root",
                "--state", f"{self.base}/state", "--address", self.address, *args]

    async def status(self) -> list[dict[str, Any]]:
        reports = json.loads(await run_checked(self.cli("status", "--json")))
        assert isinstance(reports, list)
        return reports

    async def fetch_split(self) -> dict[str, Any]:
        """Bytes and requests fetched, summed over the lazy layers, split by cause where
        ``snapfs status --json`` reports the cause."""
        reports = await self.status()
        split: dict[str, Any] = {
            "layers": len(reports),
            "states": sorted({str(r.get("state")) for r in reports}),
            "bytes_fetched": sum(int(r.get("bytes_fetched", 0)) for r in reports),
            "requests": sum(int(r.get("requests", 0)) for r in reports),
        }
        if not reports:
            return split  # no lazy layer (a gzip image): nothing to split
        missing = [k for k in SPLIT_KEYS if k not in reports[0]]
        for key in SPLIT_KEYS:
            if key not in missing:
                split[key] = sum(int(r.get(key, 0)) for r in reports)
        if missing:
            split["missing"] = missing  # the daemon does not report them (yet)
        return split

    async def wait_local(self, timeout: float = LOCAL_TIMEOUT) -> None:
        """Until every lazy layer is ``local`` (the background fetch is done)."""
        with trio.move_on_after(timeout):
            while True:
                reports = await self.status()
                if reports and all(r.get("state") == "local" for r in reports):
                    return
                await trio.sleep(0.2)
        raise Unavailable(f"snapfs under {self.base}: layers not local after {timeout:.0f}s "
                          f"({[r.get('state') for r in await self.status()]})")


@asynccontextmanager
async def open_snapfs_daemon(base: Path, *, config: str = "", startup_timeout: float = 30
                             ) -> AsyncIterator[SnapfsDaemon]:
    """``snapfs serve`` under ``base`` (``config``: TOML text, else the defaults); stopped by
    PID, mounts below ``base`` removed, on exit."""
    base.mkdir(parents=True, exist_ok=False)
    d = SnapfsDaemon(base, f"{base}/snapfs.sock")
    config_path = base / "config.toml"
    config_path.write_text(config)
    log = (base / "snapfs.log").open("wb")
    proc = await trio.lowlevel.open_process(
        d.cli("serve", "--config", str(config_path), "--metrics-address", ""), stdout=log,
        stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with trio.move_on_after(startup_timeout) as scope:
            while not Path(d.address).exists():
                if proc.poll() is not None:
                    tail = (base / "snapfs.log").read_text(errors="replace").strip()[-400:]
                    raise Unavailable(f"snapfs serve exited {proc.returncode}: {tail}")
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise Unavailable(f"snapfs serve under {base} made no socket in {startup_timeout:.0f}s")
        yield d
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(proc)
            log.close()
            # The daemon's FUSE server outlives it by design; this run started it: stop it.
            server = read_pid(base / "state" / "fuse-server.pid")
            if server is not None and os.path.exists(f"/proc/{server}"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server, signal.SIGKILL)
            detach_all_under(base)
            keep_log(base)
            await trio.to_thread.run_sync(shutil.rmtree, base, True)


def keep_log(base: Path) -> None:
    """With ``SNAPFS_BENCH_LOGS=DIR``, keep each daemon's log (and its FUSE server's) there
    before its base is removed: the timeline of a slow repetition."""
    dest = os.environ.get("SNAPFS_BENCH_LOGS")
    if not dest:
        return
    Path(dest).mkdir(parents=True, exist_ok=True)
    name = "-".join(base.parts[-3:])
    for log in [base / "snapfs.log", *sorted((base / "state").glob("*.log"))]:
        if log.is_file():
            shutil.copyfile(log, Path(dest) / f"{name}-{log.name}")


class SnapfsContainerdEnv(ContainerdEnv):
    def __init__(self, d: SnapfsDaemon, *args: Any) -> None:
        super().__init__(*args)
        self.daemon = d

    async def wait_local(self) -> None:
        await self.daemon.wait_local()

    async def fetch_split(self) -> dict[str, Any] | None:
        return await self.daemon.fetch_split()


class SnapfsRunEnv:
    def __init__(self, d: SnapfsDaemon) -> None:
        self.daemon = d

    def pull_cmd(self, ref: str) -> list[str]:
        return self.daemon.cli("pull", "-q", ref)

    def run_cmd(self, ref: str, name: str, argv: Sequence[str]) -> list[str]:
        return self.daemon.cli("run", "--rm", "-q", ref, *argv)

    async def wait_local(self) -> None:
        await self.daemon.wait_local()

    async def fetch_split(self) -> dict[str, Any] | None:
        return await self.daemon.fetch_split()


class SnapfsMode:
    """One variant through containerd (``via="containerd"``) or snapfs's CLI (``"run"``);
    ``hot``: background fetch on, and the ``*-local`` workloads measured."""

    def __init__(self, name: str, variant: str, *, via: str, hot: bool = False) -> None:
        self.name = name
        self.variant = variant
        self.via = via
        self.hot = hot
        self.local_runs = hot
        self.ctr_remote = ""

    async def prepare(self, target: Target) -> None:
        for command in ("serve", "pull", "run", "status"):
            await trio.to_thread.run_sync(probe_help, [SNAPFS, command])
        if self.via == "containerd":
            [self.ctr_remote] = need_binaries("ctr-remote")
        if self.variant not in target.refs:
            raise Unavailable(f"no {self.variant} image (its startup profile could not be "
                              "recorded)")

    @asynccontextmanager
    async def open_env(self, target: Target, base: Path) -> AsyncIterator[Env]:
        base.mkdir(parents=True, exist_ok=True)
        config = BACKGROUND_CONFIG if self.hot else ""
        async with open_snapfs_daemon(base / "snapfs", config=config) as d:
            if self.via == "run":
                yield SnapfsRunEnv(d)
                return
            async with open_containerd(base / "ctd", Proxy(PROXY_NAME, d.address)) as cd:
                yield SnapfsContainerdEnv(d, cd, PROXY_NAME, self.ctr_remote)

    async def measure_io(self, target: Target) -> dict[str, Any]:
        ref = target.refs[self.variant]
        async with open_snapfs_daemon(target.scratch / "sio") as d:
            await run_checked(d.cli("pull", "-q", ref))
            mountpoint = Path(tempfile.mkdtemp(prefix="io-", dir=target.scratch))
            try:
                await mount_view(d, target.chain_ids[self.variant], mountpoint)
                try:
                    return {f"lazy-{self.variant}": await io_cold_and_warm(
                        mountpoint, target.big_file, target.walk_dir)}
                finally:
                    with trio.CancelScope(shield=True):
                        await unmount(mountpoint)
            finally:
                mountpoint.rmdir()


async def mount_view(d: SnapfsDaemon, chain_id: str, mountpoint: Path) -> None:
    """A read-only view of the committed snapshot ``chain_id``, mounted at ``mountpoint``."""
    from snapfs.client.snapshots import open_client

    async with open_client(d.address) as client:
        infos = await client.list()
        names = [i.name for i in infos if i.name.endswith(chain_id)]
        if not names:
            raise FailedPrecondition(f"snapfs has no committed snapshot for {chain_id}")
        mounts = await client.view(f"bench-io-{chain_id[-12:]}", names[0])
    await mount_json_mounts([{"type": m.type, "source": m.source, "options": list(m.options)}
                             for m in mounts], mountpoint)


async def record_profile(target: Target, variant: str) -> Sequence[str]:
    """Run the workload once with ``snapfs run --record-profile`` and return the files read."""
    help_text = await trio.to_thread.run_sync(probe_help, [SNAPFS, "run"])
    if "--record-profile" not in help_text:
        raise Unavailable("snapfs run has no --record-profile")
    async with open_snapfs_daemon(target.scratch / "prof") as d:
        out = d.base / "profile.txt"
        await run_checked(d.cli("run", "--rm", "-q", "--record-profile", str(out),
                                target.refs[variant], *target.image.workload))
        return parse_profile(out.read_text())


async def publish_profile(target: Target, variant: str) -> int:
    """Record the start workload's profile as a node's first container of the image would (a
    fresh root, the same path the measured mode takes: containerd's ``ctr-remote rpull`` +
    ``ctr run`` through a snapfs daemon, recording on by default), then publish it with
    ``snapfs profile push``: the image is not rebuilt. Returns how many files it lists."""
    ref = target.refs[variant]
    [ctr_remote] = need_binaries("ctr-remote")
    base = target.scratch / "pub"
    async with open_snapfs_daemon(base / "snapfs") as d:
        async with open_containerd(base / "ctd", Proxy(PROXY_NAME, d.address)) as cd:
            env = SnapfsContainerdEnv(d, cd, PROXY_NAME, ctr_remote)
            await run_checked(env.pull_cmd(ref))
            await run_checked(env.run_cmd(ref, "profile-recording", target.image.workload))
        # The daemon stores its recording after [profile] record_seconds (10 s by default).
        with trio.move_on_after(PROFILE_WAIT):
            while (await trio.run_process(d.cli("profile show", "--local", ref), check=False,
                                          capture_stdout=True, capture_stderr=True)).returncode:
                await trio.sleep(0.5)
        await run_checked(d.cli("profile push", ref))
    async with open_snapfs_daemon(target.scratch / "pub-check") as d:
        # What a fresh node finds: the published document, not the local recording.
        doc = json.loads(await run_checked(d.cli("profile show", "--remote", "--json", ref)))
    files = (doc.get("profile") or {}).get("files") if isinstance(doc, dict) else None
    if not files:
        raise Unavailable(f"the profile published for {ref} lists no files")
    return len(files)


def snapfs_modes() -> list[SnapfsMode]:
    c = "containerd"
    return [
        SnapfsMode("snapfs-containerd-gzip", "gzip", via=c),
        SnapfsMode("snapfs-containerd-estargz", "estargz", via=c),
        SnapfsMode("snapfs-containerd-gzip-index", "gzip-index", via=c),
        SnapfsMode("snapfs-containerd-zstdchunked", "zstdchunked", via=c),
        SnapfsMode("snapfs-containerd-estargz-published", "estargz-pub", via=c),
        SnapfsMode("snapfs-containerd-estargz-profile", "estargz-prof", via=c),
        SnapfsMode("snapfs-containerd-zstdchunked-profile", "zstdchunked-prof", via=c),
        SnapfsMode("snapfs-containerd-estargz-hot", "estargz", via=c, hot=True),
        SnapfsMode("snapfs-run-gzip", "gzip", via="run"),
        SnapfsMode("snapfs-run-estargz", "estargz", via="run"),
        SnapfsMode("snapfs-run-gzip-index", "gzip-index", via="run"),
        SnapfsMode("snapfs-run-zstdchunked", "zstdchunked", via="run"),
    ]
