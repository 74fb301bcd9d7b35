"""A thin async wrapper around the runc binary.

Every call gets ``--root <state dir>`` (so tests and daemons keep private runc state) and a
private ``--log`` file in JSON, from which a failure's own error line is read back: runc's
stderr is often the container's stderr too, so it cannot be captured for create/run.

Must not decide a container's lifecycle: each method is one runc invocation.
"""

from __future__ import annotations

import json
import logging
import os
import signal as _signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from runtime.errors import AlreadyExists, ContentError, FailedPrecondition, Internal, NotFound
from snapfs.sys.userns import in_user_namespace

log = logging.getLogger(__name__)

LIST_ATTEMPTS = 10

# The one table from runc's messages to our error categories; first match wins.
_ERROR_TABLE: tuple[tuple[str, type[ContentError]], ...] = (
    ("does not exist", NotFound),
    ("already exists", AlreadyExists),
    ("exists", AlreadyExists),
    ("not running", FailedPrecondition),
    ("cannot start", FailedPrecondition),
    ("not stopped", FailedPrecondition),
    ("is not a created", FailedPrecondition),
    ("is paused", FailedPrecondition),
)


def runc_error(container_id: str, action: str, message: str) -> ContentError:
    """The error for runc failing to ``action`` container ``container_id`` with ``message``."""
    # runc often starts its own message with "runc create failed: "; don't say it twice.
    message = message.removeprefix(f"runc {action} failed: ")
    kind: type[ContentError] = Internal
    lowered = message.lower()
    for needle, cls in _ERROR_TABLE:
        if needle in lowered:
            kind = cls
            break
    return kind(f"container {container_id}: runc {action} failed: {message}")


def _last_error(log_text: str, stderr: bytes) -> str:
    """runc's error line: the last error-level entry of its JSON log, else stderr's last line."""
    for line in reversed(log_text.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", "")).strip()
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no error message)"


class Runc:
    """The runc binary at ``binary`` with its state under ``root``."""

    def __init__(
        self, binary: str = "runc", root: Path | None = None, *, rootless: bool | None = None
    ) -> None:
        self.binary = binary
        self.root = root
        # runc's own default ("auto") guesses from the environment; be explicit instead. In a
        # user namespace euid is 0 but cgroups are not ours to write: rootless all the same.
        if rootless is None:
            rootless = os.geteuid() != 0 or in_user_namespace()
        self.rootless = rootless

    def _global_args(self, log_path: str) -> list[str]:
        args = [self.binary, "--log", log_path, "--log-format", "json"]
        if self.root is not None:
            args += ["--root", str(self.root)]
        if self.rootless:
            args += ["--rootless", "true"]
        return args

    async def _call(
        self,
        container_id: str,
        action: str,
        args: Sequence[str],
        *,
        passthrough: bool = False,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        ok_codes: Sequence[int] = (0,),
    ) -> subprocess.CompletedProcess[bytes]:
        fd, log_path = tempfile.mkstemp(prefix="snapfs-runc-", suffix=".log")
        os.close(fd)
        try:
            cmd = [*self._global_args(log_path), *args]
            log.debug("runc: %s", " ".join(cmd))
            if passthrough:
                proc = await trio.run_process(
                    cmd, check=False, stdin=stdin, stdout=stdout, stderr=stderr
                )
            else:
                proc = await trio.run_process(
                    cmd, check=False, stdin=subprocess.DEVNULL,
                    capture_stdout=True, capture_stderr=True,
                )  # fmt: skip
            log_text = Path(log_path).read_text(errors="replace")
        finally:
            os.unlink(log_path)
        if proc.returncode not in ok_codes or (passthrough and _has_error(log_text)):
            raise runc_error(container_id, action, _last_error(log_text, proc.stderr or b""))
        return proc

    async def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        console_socket: Path | None = None,
        pid_file: Path | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        """``runc create``: without a console socket the container inherits these fds."""
        args = ["create", "--bundle", str(bundle)]
        if console_socket is not None:
            args += ["--console-socket", str(console_socket)]
        if pid_file is not None:
            args += ["--pid-file", str(pid_file)]
        await self._call(container_id, "create", [*args, container_id], passthrough=True,
                         stdin=stdin, stdout=stdout, stderr=stderr)  # fmt: skip

    async def start(self, container_id: str) -> None:
        await self._call(container_id, "start", ["start", container_id])

    async def run(
        self,
        container_id: str,
        bundle: Path,
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> int:
        """``runc run`` in the foreground; the container's exit status (128+n if signalled).

        runc itself forwards signals it receives and, for a spec with ``terminal: true``,
        uses our own terminal as the console.
        """
        proc = await self._call(
            container_id, "run", ["run", "--bundle", str(bundle), container_id],
            passthrough=True, stdin=stdin, stdout=stdout, stderr=stderr, ok_codes=range(256),
        )  # fmt: skip
        return proc.returncode

    async def exec(
        self,
        container_id: str,
        args: Sequence[str],
        *,
        tty: bool = False,
        env: Sequence[str] = (),
        cwd: str | None = None,
        stdin: int | None = None,
    ) -> int:
        """``runc exec`` in the foreground: the process's exit status (128+n if signalled).

        With ``tty`` runc makes the pty and copies it to our own stdio.
        """
        opts = ["exec", *(["--tty"] if tty else [])]
        for item in env:
            opts += ["--env", item]
        if cwd is not None:
            opts += ["--cwd", cwd]
        proc = await self._call(container_id, "exec", [*opts, container_id, *args],
                                passthrough=True, stdin=stdin, ok_codes=range(256))
        return proc.returncode

    async def kill(self, container_id: str, sig: int = _signal.SIGTERM, all: bool = False) -> None:
        args = ["kill", *(["--all"] if all else []), container_id, str(int(sig))]
        await self._call(container_id, "kill", args)

    async def delete(self, container_id: str, force: bool = True) -> None:
        args = ["delete", *(["--force"] if force else []), container_id]
        await self._call(container_id, "delete", args)

    async def state(self, container_id: str) -> dict[str, Any]:
        proc = await self._call(container_id, "state", ["state", container_id])
        state: dict[str, Any] = json.loads(proc.stdout)
        return state

    async def list(self) -> list[dict[str, Any]]:
        # runc reads its root's directory, then each container's state: a container deleted
        # in between (another snapfs command's) fails the whole list with ENOENT. Such a
        # container is gone, so listing again answers; churn is bounded by LIST_ATTEMPTS.
        for attempt in range(LIST_ATTEMPTS):
            try:
                proc = await self._call("*", "list", ["list", "--format", "json"])
                break
            except Internal as e:
                if "no such file or directory" not in str(e) or attempt + 1 == LIST_ATTEMPTS:
                    raise
        # runc prints "null" when it has no containers.
        containers: list[dict[str, Any]] = json.loads(proc.stdout) or []
        return containers


def _has_error(log_text: str) -> bool:
    return any('"level":"error"' in ln or '"level":"fatal"' in ln for ln in log_text.splitlines())
