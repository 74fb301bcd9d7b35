"""The snapfs modes: native pull, lazy (eStargz, zstd:chunked, with and without a startup
profile) and the hot path, each driven through the ``snapfs`` CLI against a private
``snapfs serve`` with a fresh root per repetition (the daemon keeps lazy layers mounted
between ``snapfs pull`` and ``snapfs run``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.measure import Sample, io_cold_and_warm, run_checked
from bench.modes import Target, mount_json_mounts, probe_help, timed_pull_and_run, unmount
from bench.procs import stop_process
from content.errors import FailedPrecondition, Unavailable
from content.profilefile import parse_profile
from snapfs.sys.mountops import detach_all_under

SNAPFS = str(Path(sys.executable).parent / "snapfs")


@dataclass(frozen=True, slots=True)
class SnapfsDaemon:
    base: Path
    address: str

    def cli(self, command: str, *args: str) -> list[str]:
        return [SNAPFS, command, "--root", f"{self.base}/root", "--state", f"{self.base}/state",
                "--address", self.address, *args]


@asynccontextmanager
async def open_snapfs_daemon(base: Path, *, startup_timeout: float = 30
                             ) -> AsyncIterator[SnapfsDaemon]:
    """``snapfs serve`` under ``base``; stopped by PID, mounts below ``base`` removed, on exit."""
    base.mkdir(parents=True, exist_ok=False)
    d = SnapfsDaemon(base, f"{base}/snapfs.sock")
    log = (base / "snapfs.log").open("wb")
    proc = await trio.lowlevel.open_process(
        d.cli("serve", "--metrics-address", ""), stdout=log, stderr=log,
        stdin=subprocess.DEVNULL, start_new_session=True)
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
            detach_all_under(base)
            await trio.to_thread.run_sync(shutil.rmtree, base, True)


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


class SnapfsMode:
    """``snapfs pull`` + ``snapfs run`` of one variant. ``hot``: every layer is made local by
    a native pull first (not timed), so the timed run is a plain kernel overlay mount."""

    def __init__(self, name: str, variant: str, *, hot: bool = False) -> None:
        self.name = name
        self.variant = variant
        self.hot = hot

    async def prepare(self, target: Target) -> None:
        for command in ("serve", "pull", "run"):
            await trio.to_thread.run_sync(probe_help, [SNAPFS, command])
        if self.variant not in target.refs:
            raise Unavailable(f"no {self.variant} image: recording a startup profile needs "
                              "`snapfs run --record-profile`")

    async def measure_cold(self, target: Target, rep: int) -> Sample:
        ref = target.refs[self.variant]
        async with open_snapfs_daemon(target.scratch / f"s{rep}") as d:
            if self.hot:
                await run_checked(d.cli("pull", "-q", ref))
            return await timed_pull_and_run(
                target, d.cli("pull", "-q", ref),
                d.cli("run", "--rm", "-q", ref, *target.image.workload))

    async def measure_io(self, target: Target) -> dict[str, Any]:
        ref = target.refs[self.variant]
        async with open_snapfs_daemon(target.scratch / "sio") as d:
            await run_checked(d.cli("pull", "-q", ref))
            mountpoint = Path(tempfile.mkdtemp(prefix="io-", dir=target.scratch))
            try:
                await mount_view(d, target.chain_ids[self.variant], mountpoint)
                try:
                    key = "hot-path" if self.hot else f"lazy-{self.variant}"
                    return {key: await io_cold_and_warm(mountpoint, target.big_file,
                                                        target.walk_dir)}
                finally:
                    with trio.CancelScope(shield=True):
                        await unmount(mountpoint)
            finally:
                mountpoint.rmdir()

    async def cleanup(self) -> None:
        return None


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


def snapfs_modes() -> list[SnapfsMode]:
    return [
        SnapfsMode("snapfs-native", "gzip"),
        SnapfsMode("snapfs-lazy-estargz", "estargz"),
        SnapfsMode("snapfs-lazy-zstdchunked", "zstdchunked"),
        SnapfsMode("snapfs-lazy-estargz-profile", "estargz-prof"),
        SnapfsMode("snapfs-lazy-zstdchunked-profile", "zstdchunked-prof"),
        SnapfsMode("snapfs-hot", "gzip", hot=True),
    ]
