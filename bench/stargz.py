"""stargz-snapshotter for the side-by-side mode: built from Debian's Go sources, then served.

Debian ships the library (``golang-github-containerd-stargz-snapshotter-dev``) and
``ctr-remote`` but no ``containerd-stargz-grpc``; ``bench/stargz/main.go`` is the small main
that wires it (see its doc comment). It is built offline in GOPATH mode against
``/usr/share/gocode``, as ``scripts/go-suite`` builds containerd's snapshotter suite, into
``bench/work/`` (gitignored), cached under a key of the Go source, ``go version`` and the
installed ``golang-*-dev`` package versions. Any failure (no Go, a missing package, a
compile error) raises Unavailable with the reason: the mode is then reported unavailable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.procs import stop_process
from content.errors import FailedPrecondition, Unavailable
from snapfs.sys.mountops import detach_all_under

SOURCE_DIR = Path(__file__).resolve().parent / "stargz"
WORK = Path(__file__).resolve().parent / "work"
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src/github.com/containerd/stargz-snapshotter"
PROXY_NAME = "stargz"


def _build_key(go: str) -> str:
    h = hashlib.sha256()
    for f in sorted(SOURCE_DIR.glob("*.go")):
        h.update(f.read_bytes())
    h.update(subprocess.run([go, "version"], capture_output=True, check=False).stdout)
    pkgs = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", "golang-*-dev"],
                          capture_output=True, check=False).stdout
    h.update(b"".join(sorted(pkgs.splitlines(keepends=True))))
    return h.hexdigest()[:16]


def build_stargz_sync(work: Path = WORK) -> Path:
    """The path of a built ``containerd-stargz-grpc``, building it (≈20 s cold) if needed."""
    go = shutil.which("go")
    if go is None:
        raise FailedPrecondition("no Go toolchain to build containerd-stargz-grpc (golang-go)")
    if not LIBRARY.is_dir():
        raise FailedPrecondition(f"no stargz-snapshotter Go sources at {LIBRARY} "
                                 "(golang-github-containerd-stargz-snapshotter-dev)")
    work.mkdir(parents=True, exist_ok=True)
    binary = work / f"containerd-stargz-grpc-{_build_key(go)}"
    if os.access(binary, os.X_OK):
        return binary
    tmp = work / f".build-{os.getpid()}"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
           "GOCACHE": str(work / "gocache")}
    res = subprocess.run([go, "build", "-o", str(tmp), "."], cwd=SOURCE_DIR, env=env,
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = " ".join(res.stderr.strip().splitlines()[-3:])
        raise Unavailable(f"building containerd-stargz-grpc failed: {tail}")
    tmp.rename(binary)  # atomic: a concurrent bench sees the whole binary or none
    return binary


@dataclass(frozen=True, slots=True)
class StargzDaemon:
    base: Path
    address: str


@asynccontextmanager
async def open_stargz_daemon(binary: Path, base: Path, *, startup_timeout: float = 30
                             ) -> AsyncIterator[StargzDaemon]:
    """``containerd-stargz-grpc`` with its root under ``base`` (default config: background
    fetch and prefetch on); stopped by PID, its FUSE mounts detached, ``base`` removed."""
    base.mkdir(parents=True, exist_ok=False)
    d = StargzDaemon(base, f"{base}/stargz.sock")
    log = (base / "stargz.log").open("wb")
    proc = await trio.lowlevel.open_process(
        [str(binary), "-address", d.address, "-root", f"{base}/root", "-log-level", "info"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with trio.move_on_after(startup_timeout) as scope:
            while not Path(d.address).exists():
                if proc.poll() is not None:
                    tail = (base / "stargz.log").read_text(errors="replace").strip()[-400:]
                    raise Unavailable(f"containerd-stargz-grpc exited {proc.returncode}: {tail}")
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise Unavailable(f"containerd-stargz-grpc under {base} made no socket in "
                              f"{startup_timeout:.0f}s")
        yield d
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(proc, grace=20)
            log.close()
            detach_all_under(base)
            await trio.to_thread.run_sync(shutil.rmtree, base, True)
