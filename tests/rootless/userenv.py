"""Fixture: an ordinary user to run the snapfs CLI as, for the rootless tests.

    rootless_snapfs session-scoped: a ``snapfs`` launcher the user can execute, in a venv
                    built here from ``/usr/bin/python3`` under ``/tmp`` (0755), holding a
                    copy of the package tree and of its runtime dependencies
    rootless_user   RootlessUser: a system user (created here if missing, removed again if
                    created), private XDG dirs it owns, /dev/fuse 0666 for the test (the
                    original mode restored afterwards), and ``run(*args)`` to run
                    ``snapfs ARGS`` as that user with a clean environment. No
                    subordinate ids: only root is mapped (the fallback).
    ranged_user     the same user with a range in /etc/subuid and /etc/subgid (lines added
                    for it, removed again after the test, under a lock shared with other
                    test runs that edit those files).

The checkout may live where an ordinary user cannot look (root's home, a ``mktemp -d``
clone: 0700), and so may the Python the tests run under (pyenv), so nothing the user
executes is taken from there: the venv is a copy. The tests run as root and drop to the
user with ``setpriv``. Everything made here is removed in teardown even when the test fails;
processes the user still has then (there should be none: each command's namespaces die
with it) are killed by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import trio
from packaging.requirements import Requirement

from snapfs.sys.mountinfo import mount_points
from tests.fixtures.realenv import need, need_binary, need_root

# One user per test process: teardown kills the user's processes and may delete the user, which
# must not reach another run (another worktree's tests) using a shared name at the same time.
USER = f"snapfs-rl-{os.getpid()}"
SYSTEM_PYTHON = Path("/usr/bin/python3")
PACKAGES = ("snapfs", "content", "runtime")  # the source trees setuptools installs
DEV_FUSE = Path("/dev/fuse")
WAIT = 120.0  # bound on one command, so a hang fails instead of blocking CI
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
SUBID_LOCK = Path("/tmp/snapfs-test-subid.lock")
SUBID_COUNT = 65536


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
    snapfs: Path  # the launcher the user runs (see rootless_snapfs)

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
                self.argv(str(self.snapfs), *args), check=False, cwd=str(self.base),
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


def _check_environment() -> None:
    need_root("root (the rootless tests create a user and drop to it)")
    for binary in ("setpriv", "useradd", "userdel", "unshare", "runc", "pgrep"):
        need_binary(binary)
    need(DEV_FUSE.exists(), "/dev/fuse")


def _runtime_distributions(name: str = "snapfs") -> list[metadata.Distribution]:
    """``name``'s installed distribution and those its (non-extra) requirements pull in."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        wanted = todo.pop()
        key = re.sub(r"[-_.]+", "-", wanted).lower()
        if key in seen:
            continue
        dist = metadata.distribution(wanted)
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_user_venv(dest: Path) -> Path:
    """A venv at ``dest`` from Debian's Python with snapfs and its runtime dependencies
    copied in (the installed files, not a download); returns its ``bin/snapfs``."""
    version = subprocess.run([str(SYSTEM_PYTHON), "-c",
                              "import sys; print('%d.%d' % sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # Compiled dependencies (grpcio, lmdb, pyfuse3) are copied as they are: same ABI needed.
    ours = "{}.{}".format(*sys.version_info[:2])
    need(version == ours,
         f"the tests' Python {ours} and "
         f"{SYSTEM_PYTHON} ({version}) to match (run the tests from scripts/setup's .venv)")
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(dest)],
                   check=True, capture_output=True)
    site = dest / "lib" / f"python{version}" / "site-packages"
    import snapfs

    tree = Path(snapfs.__file__).resolve().parent.parent
    for package in PACKAGES:
        _copy_tree(tree / package, site / package)
    for dist in _runtime_distributions():
        if dist.metadata["Name"].lower() == "snapfs":
            continue  # an editable install: its files are the source trees copied above
        for file in dist.files or []:
            src = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or "__pycache__" in file.parts or not src.is_file():
                continue  # console scripts (bin/ of the tests' venv) and byte code
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    launcher = dest / "bin" / "snapfs"
    launcher.write_text(f"#!{dest / 'bin' / 'python'}\n"
                        "import sys\nfrom snapfs.cli import console_main\n"
                        "sys.exit(console_main())\n")
    launcher.chmod(0o755)
    return launcher


@pytest.fixture(scope="session")
def rootless_snapfs() -> Iterator[Path]:
    """The ``snapfs`` an ordinary user runs, built once per session (see the module doc)."""
    need_root("root (the rootless tests create a user and drop to it)")
    need(SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} (the user's venv is built from it)")
    dest = Path(tempfile.mkdtemp(prefix="snapfs-uservenv-", dir="/tmp"))
    try:
        dest.chmod(0o755)  # mkdtemp makes it 0700; the user must reach bin/ and lib/
        yield build_user_venv(dest / "venv")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


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
def rootless_user(rootless_snapfs: Path) -> Iterator[RootlessUser]:
    _check_environment()
    created = _create_user()
    try:
        entry = pwd.getpwnam(USER)
        base = Path(tempfile.mkdtemp(prefix="snapfs-rootless-", dir="/tmp"))
        fuse_mode = stat.S_IMODE(DEV_FUSE.stat().st_mode)
        try:
            user = RootlessUser(USER, entry.pw_uid, entry.pw_gid, base, rootless_snapfs)
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


def _edit_subids(edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite /etc/subuid and /etc/subgid through ``edit`` (lines in, lines out), each
    atomically (a rename keeps a concurrent reader from seeing half a file), under a lock."""
    with open(SUBID_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in SUBID_FILES:
            lines = path.read_text().splitlines() if path.exists() else []
            temp = path.with_name(f".{path.name}.snapfs-test-{os.getpid()}")
            temp.write_text("".join(f"{line}\n" for line in edit(lines)))
            temp.chmod(0o644)
            os.replace(temp, path)


@pytest.fixture
def ranged_user(rootless_user: RootlessUser) -> Iterator[RootlessUser]:
    """``rootless_user`` with ``SUBID_COUNT`` subordinate uids and gids (see the module doc).
    The range is derived from the user's uid, so runs in other worktrees (other users) do not
    share one; newuidmap only checks that the user owns it."""
    need_binary("newuidmap")
    need_binary("newgidmap")
    start = 1_000_000 + rootless_user.uid * SUBID_COUNT
    mine = f"{rootless_user.name}:"
    _edit_subids(lambda lines: [*(x for x in lines if not x.startswith(mine)),
                                f"{mine}{start}:{SUBID_COUNT}"])
    try:
        yield rootless_user
    finally:
        _edit_subids(lambda lines: [x for x in lines if not x.startswith(mine)])
