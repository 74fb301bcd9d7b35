"""``python -m bench cli-startup``: how long ``snapfs --help``, ``COMMAND --help``, ``ps``,
``images`` and ``status`` take, wall clock, median of N runs each.

``ps``, ``images`` and ``status`` are measured on an empty root without a daemon and again
through a ``snapfs serve`` this benchmark starts (and stops, by its PID) on a private root
and socket under a temporary directory. Results go to
``bench/results/cli-startup-<time>.json`` with the commit. Times on a shared machine are
noisy: the JSON keeps min and max next to the median, and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from snapfs.sys.procs import terminate

SNAPFS = Path(sys.executable).parent / "snapfs"
HELP_COMMANDS = ("run", "pull", "ps", "images", "status", "convert", "logs", "exec")
LISTINGS = ("ps", "images", "status")
START_TIMEOUT = 30.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cli-startup", help="wall-clock start-up time of snapfs commands")
    p.add_argument("--reps", type=int, default=10, help="runs per command (default 10)")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results",
                   help="the JSON goes here")


def time_command(argv: Sequence[str], reps: int) -> dict[str, float]:
    """Median, min and max wall-clock seconds of ``reps`` runs of ``argv``."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "n": reps}


@contextlib.contextmanager
def daemon(base: Path) -> Iterator[list[str]]:
    """A ``snapfs serve`` on ``base``; yields the flags that reach it."""
    flags = ["--root", str(base / "root"), "--state", str(base / "state"),
             "--address", str(base / "snapfs.sock")]
    log = open(base / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(SNAPFS), "serve", *flags, "--metrics-address", ""],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(base / "state" / "status.sock"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"snapfs serve did not start; see {base / 'serve.log'}")
            time.sleep(0.05)
        yield flags
    finally:
        terminate(proc, timeout=15)
        log.close()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parent,
                           check=False).stdout.strip()
    return proc.stdout.strip() + ("-dirty" if dirty else "")


def measure(reps: int) -> dict[str, Any]:
    snapfs = str(SNAPFS)
    results: dict[str, Any] = {"--help": time_command([snapfs, "--help"], reps)}
    for cmd in HELP_COMMANDS:
        results[f"{cmd} --help"] = time_command([snapfs, cmd, "--help"], reps)
    base = Path(tempfile.mkdtemp(prefix="snapfs-bcs", dir="/tmp"))  # short: socket paths
    try:
        flags = ["--root", str(base / "e-root"), "--state", str(base / "e-state"),
                 "--address", str(base / "none.sock")]
        for cmd in LISTINGS:
            results[f"{cmd} (no daemon)"] = time_command([snapfs, cmd, *flags], reps)
        with daemon(base) as dflags:
            for cmd in LISTINGS:
                results[f"{cmd} (daemon)"] = time_command([snapfs, cmd, *dflags], reps)
    finally:
        subprocess.run(["umount", "-l", str(base / "e-root" / "fuse")],
                       stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(base, ignore_errors=True)
    return results


def run_cli_startup(args: argparse.Namespace) -> int:
    results = measure(args.reps)
    now = datetime.datetime.now(datetime.UTC)
    report = {"benchmark": "cli-startup", "commit": _commit(), "time": now.isoformat(),
              "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "loadavg": os.getloadavg(), "reps": args.reps, "results": results}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"cli-startup-{now.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(k) for k in results)
    for name, r in results.items():
        print(f"{name:<{width}}  median {r['median_s']:.3f}s  (min {r['min_s']:.3f}, "
              f"max {r['max_s']:.3f})")
    print(f"written to {out}")
    return 0


__all__ = ["add_parser", "measure", "run_cli_startup", "time_command"]
