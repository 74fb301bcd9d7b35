"""Fixture: an ordinary user to run the snapfs CLI as, for the rootless tests.

    rootless_user   RootlessUser: a system user (created here if missing, removed again if
                    created), private XDG dirs it owns, /dev/fuse 0666 for the test (the
                    original mode restored afterwards), and ``run(*args)`` to run
                    ``snapfs ARGS`` as that user with a clean environment.

The tests run as root and drop to the user with ``setpriv``. Everything made here is
removed in teardown even when the test fails; processes the user still has then (there
should be none: each command's namespaces die with it) are killed by PID.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from snapfs.sys.mountinfo import mount_points
from tests.fixtures.realenv import need, need_binary, need_root

USER = "snapfs-rootless"
SNAPFS = Path(sys.executable).parent / "snapfs"
DEV_FUSE = Path("/dev/fuse")
WAIT = 120.0  # bound on one command, so a hang fails instead of blocking CI


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class RootlessUser:
    name: str
    uid: int
    gid: int
    base: Path  # private dir the user owns: runtime/, data/, config/ below it

    @property
    def runtime_dir(self) -> Path:
        return self.base / "runtime"

    @property
    def data_home(self) -> Path:
        return self.base / "data"

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": pwd.getpwuid(self.uid).pw_dir,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_DATA_HOME": str(self.data_home),
            "XDG_CONFIG_HOME": str(self.base / "config"),
            "LANG": "C.UTF-8",
        }

    def argv(self, *cmd: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--reset-env", "env", *(f"{k}={v}" for k, v in self.env().items()), *cmd]

    async def run(self, *args: str) -> Result:
        """``snapfs ARGS`` as this user."""
        with trio.fail_after(WAIT):
            proc = await trio.run_process(
                self.argv(str(SNAPFS), *args), check=False, cwd=str(self.base),
                stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"))

    async def ok(self, *args: str) -> str:
        res = await self.run(*args)
        assert res.status == 0, f"snapfs {' '.join(args)}: exit {res.status}\n{res.stderr}"
        return res.stdout

    def pids(self) -> list[int]:
        """The user's live processes."""
        out = subprocess.run(["pgrep", "-u", str(self.uid)], capture_output=True, text=True,
                             check=False).stdout
        return [int(p) for p in out.split()]

    def host_mounts(self) -> list[str]:
        """Mount points in this (the host's) mount namespace under the user's dirs."""
        return [p for p in mount_points() if p.startswith(str(self.base))]


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _check_environment() -> None:
    need_root("root (the rootless tests create a user and drop to it)")
    for binary in ("setpriv", "useradd", "userdel", "unshare", "runc", "pgrep"):
        need_binary(binary)
    python = Path(os.path.realpath(sys.executable))
    need(_traversable_by_others(Path(sys.executable).parent)
         and _traversable_by_others(Path(__file__).resolve().parent)
         and bool(python.stat().st_mode & stat.S_IXOTH),
         f"the venv ({sys.executable} -> {python}) and the repository readable and "
         "executable by an ordinary user")
    need(DEV_FUSE.exists(), "/dev/fuse")


def _create_user() -> bool:
    """Make the test user if missing; whether it was created here."""
    try:
        pwd.getpwnam(USER)
        return False
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin",
                        USER], check=True, capture_output=True)
        return True


def _kill_leftovers(user: RootlessUser) -> list[int]:
    pids = user.pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@pytest.fixture
def rootless_user() -> Iterator[RootlessUser]:
    _check_environment()
    created = _create_user()
    try:
        entry = pwd.getpwnam(USER)
        base = Path(tempfile.mkdtemp(prefix="snapfs-rootless-", dir="/tmp"))
        fuse_mode = stat.S_IMODE(DEV_FUSE.stat().st_mode)
        try:
            user = RootlessUser(USER, entry.pw_uid, entry.pw_gid, base)
            for d in (base, user.runtime_dir, user.data_home, base / "config"):
                d.mkdir(mode=0o700, exist_ok=True)
                os.chown(d, user.uid, user.gid)
            # An unprivileged user needs to open /dev/fuse (0600 here, no udev); distributions
            # ship it 0666.
            os.chmod(DEV_FUSE, 0o666)
            try:
                probe = subprocess.run(user.argv("unshare", "--user", "--map-root-user",
                                                 "--mount", "true"),
                                       capture_output=True, text=True, check=False)
                need(probe.returncode == 0, "unprivileged user namespaces (unshare -Urm as "
                     f"{USER}: {probe.stderr.strip()})")
                yield user
            finally:
                os.chmod(DEV_FUSE, fuse_mode)
                leftovers = _kill_leftovers(user)
                if leftovers:
                    print(f"rootless_user: killed leftover processes {leftovers}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    finally:
        if created:
            subprocess.run(["userdel", "--remove", USER], check=False, capture_output=True)
