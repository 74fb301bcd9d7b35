"""A private Debian ``docker-registry`` (distribution 2.8) on 127.0.0.1, for the demo and bench.

It gets its own storage directory and a free loopback port, and is stopped by the PID we
started. Tests have their own fixture; this is the same thing for commands that need a
registry on a machine with no network.

Must not listen beyond 127.0.0.1, nor leave its process running after the context exits.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from content.errors import FailedPrecondition, Unavailable
from snapfs.sys.procs import terminate

BINARY_CANDIDATES = ("docker-registry", "/usr/bin/docker-registry", "registry")


@dataclass(frozen=True, slots=True)
class LocalRegistry:
    host: str          # "127.0.0.1:PORT"
    storage: Path
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary() -> str:
    for name in BINARY_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise FailedPrecondition("docker-registry not found (run scripts/setup)")


def write_config(workdir: Path, port: int, extra: str = "") -> Path:
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + extra
    )
    return config


@contextmanager
def run_local_registry(workdir: Path, *, startup_timeout: float = 20.0) -> Iterator[LocalRegistry]:
    """Start a registry under ``workdir``; stop it on exit, even when the body fails."""
    binary = find_binary()
    port = free_port()
    config = write_config(workdir, port)
    log = (workdir / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    reg = LocalRegistry(f"127.0.0.1:{port}", workdir / "storage", proc.pid)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise Unavailable(f"docker-registry exited {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{reg.url}/v2/", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"docker-registry on {reg.host} did not answer within "
                                  f"{startup_timeout:.0f}s")
            time.sleep(0.05)
        yield reg
    finally:
        terminate(proc, timeout=10)
        log.close()
