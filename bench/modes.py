"""Ways of getting from "pull" to a running workload; each is measured the same way.

A mode is a small object with ``prepare`` (raises ContentError with the reason when its
prerequisites are missing: the mode is then reported "unavailable", never dropped or faked),
``measure_cold`` (one repetition from an empty store with page caches dropped), ``measure_io``
(read throughput through the image's root filesystem) and ``cleanup``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from bench.containerd import open_containerd, pull_args
from bench.images import ImageSpec
from bench.link import ShapedLink
from bench.measure import Sample, drop_caches, io_cold_and_warm, run_to_first_line
from content.errors import FailedPrecondition, Unavailable


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
        return "usr" if self.image.packages else "."


class Mode(Protocol):
    name: str
    variant: str  # the tag it pulls

    async def prepare(self, target: Target) -> None: ...
    async def measure_cold(self, target: Target, rep: int) -> Sample: ...
    async def measure_io(self, target: Target) -> dict[str, Any]: ...
    async def cleanup(self) -> None: ...


async def timed_pull_and_run(target: Target, pull_cmd: list[str], run_cmd: list[str]) -> Sample:
    """Caches dropped, then: pull (timed), run (first line timed), bytes counted at the link."""
    await drop_caches()
    before = await target.link.stats()
    start = trio.current_time()
    res = await trio.run_process(pull_cmd, capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise Unavailable(f"pull {target.refs} exited {res.returncode}: "
                          f"{res.stderr.decode(errors='replace').strip()[-400:]}")
    pulled = trio.current_time()
    first = await run_to_first_line(run_cmd)
    after = await target.link.stats()
    return Sample(pull_s=pulled - start, ttfr_s=first.at - start, total_s=first.ended - start,
                  bytes_fetched=after.bytes_down - before.bytes_down, first_line=first.line)


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


class ContainerdNative:
    """containerd's own overlayfs snapshotter: ``ctr image pull`` + ``ctr run``, a fresh
    containerd root for each repetition."""

    name = "containerd-overlayfs"
    variant = "gzip"

    async def prepare(self, target: Target) -> None:
        if os.geteuid() != 0:
            raise FailedPrecondition("containerd needs root")
        async with open_containerd(target.scratch / "probe") as cd:
            await cd.ctr("version")

    async def measure_cold(self, target: Target, rep: int) -> Sample:
        ref = target.refs[self.variant]
        async with open_containerd(target.scratch / f"c{rep}") as cd:
            return await timed_pull_and_run(
                target, cd.ctr_cmd(*pull_args(ref)),
                cd.ctr_cmd("run", "--rm", ref, f"bench-{rep}", *target.image.workload))

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

    async def cleanup(self) -> None:
        return None


def probe_help(cmd: list[str]) -> str:
    """The ``--help`` text of a command, or raise Unavailable with why it failed."""
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise Unavailable(f"{' '.join(cmd[-1:])} --help failed: {tail}")
    return res.stdout
