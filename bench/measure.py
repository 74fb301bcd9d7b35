"""What one repetition records, and the helpers that take the times.

Times come from ``trio.current_time()`` (monotonic). "First response" is the moment the
workload's first stdout line reaches us through the client (``ctr run`` / ``snapfs run``),
read line by line from the pipe as a user watching a terminal would see it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from content.errors import Unavailable

READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Sample:
    """One workload's measure in one cold repetition of one mode on one image.

    ``time_s`` is the headline number, what the workload's name says is timed: for a cold
    workload (``start``, ``read-usr``) it equals ``ttfr_s``, from the pull command's start;
    for a later container (``second-start``, ``*-local``) it equals ``run_s``, from that
    ``ctr run``'s start. Bytes are counted at the shaping proxy from the pull's start to
    this container's exit.
    """

    time_s: float
    pull_s: float
    run_s: float  # from the run command's start to the workload's first output line
    ttfr_s: float  # from the pull command's start to the workload's first output line
    total_s: float  # from the pull command's start to the client's exit
    bytes_fetched: int  # registry → client, counted at the shaping proxy
    first_line: str
    fetch_split: dict[str, Any] | None = None  # snapfs: on-demand / prefetch / background
    # *-local workloads: from the pull command's start until every lazy layer was local
    # (the background fetch done), the "local within 1.5x the link time of the blob".
    local_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FirstLine:
    at: float  # trio.current_time() when the first line arrived
    line: str
    ended: float
    returncode: int


async def drop_caches() -> None:
    """Write back, then drop page, dentry and inode caches, as every cold start must."""
    def drop() -> None:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

    await trio.to_thread.run_sync(drop)


async def run_to_first_line(cmd: Sequence[str]) -> FirstLine:
    """Run ``cmd``; note when its first stdout line arrives; wait for it to exit."""
    proc = await trio.lowlevel.open_process(list(cmd), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    first_at: float | None = None
    buf = bytearray()
    try:
        async with trio.open_nursery() as nursery:
            async def drain_stderr() -> None:
                assert proc.stderr is not None
                while chunk := await proc.stderr.receive_some(65536):
                    err.extend(chunk)

            nursery.start_soon(drain_stderr)
            while chunk := await proc.stdout.receive_some(65536):
                if first_at is None and b"\n" in buf + chunk:
                    first_at = trio.current_time()
                buf.extend(chunk)
            await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    ended = trio.current_time()
    if proc.returncode != 0 or first_at is None:
        raise Unavailable(f"{os.path.basename(cmd[0])} {' '.join(cmd[1:3])}… exited "
                          f"{proc.returncode} (stdout {bytes(buf[:200])!r}): "
                          f"{err.decode(errors='replace').strip()[-400:]}")
    return FirstLine(first_at, buf.split(b"\n", 1)[0].decode(errors="replace"), ended,
                     proc.returncode)


async def run_checked(cmd: Sequence[str]) -> bytes:
    res = await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise Unavailable(f"{os.path.basename(cmd[0])} {' '.join(cmd[1:3])}… exited "
                          f"{res.returncode}: {res.stderr.decode(errors='replace').strip()[-400:]}")
    return bytes(res.stdout)


# --- read throughput through a mounted rootfs --------------------------------------------------

def read_file_sync(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_SIZE):
            total += len(chunk)
    return total


def walk_and_read_sync(top: Path) -> tuple[int, int]:
    """Stat every entry under ``top`` and read every regular file: (files, bytes)."""
    files = total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            os.lstat(os.path.join(dirpath, name))
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                os.lstat(path)
                continue
            files += 1
            total += read_file_sync(Path(path))
    return files, total


async def io_pass(root: Path, big_file: str, walk_dir: str) -> dict[str, float]:
    """Sequential read of one large file, then a metadata walk + read of ``walk_dir``."""
    t0 = trio.current_time()
    size = await trio.to_thread.run_sync(read_file_sync, root / big_file)
    t1 = trio.current_time()
    files, total = await trio.to_thread.run_sync(walk_and_read_sync, root / walk_dir)
    t2 = trio.current_time()
    return {"seq_bytes": size, "seq_s": t1 - t0, "seq_mb_s": size / 1e6 / max(t1 - t0, 1e-9),
            "walk_files": files, "walk_bytes": total, "walk_s": t2 - t1}


async def io_cold_and_warm(root: Path, big_file: str, walk_dir: str) -> dict[str, Any]:
    await drop_caches()
    cold = await io_pass(root, big_file, walk_dir)
    warm = await io_pass(root, big_file, walk_dir)
    return {"cold": cold, "warm": warm}
