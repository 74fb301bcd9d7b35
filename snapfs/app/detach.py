"""``snapfs run -d``: the container outlives the command, under a small supervising process.

    snapfs run -d …  ──spawn (new session, stdio /dev/null)──▶  python -m snapfs.app.detach REQUEST
         │  reads the notify pipe until EOF                          │ opens its own engine,
         │  ◀── {"started": id} | {"error": …, "status": n} ─────────┤ runs the request with
         ▼                                                           │ output to <dir>/log, waits
    prints the id, exits 0 (or the error, 125/126/127)               ▼ for runc, records the status

The supervisor is the container's owner in its record (``ps`` shows it running while the
supervisor lives) and its child subreaper: it waits for the container, records the exit
status and, for ``--rm``, removes it — exactly what a foreground ``snapfs run`` does, because
it is the same code (``snapfs.app.run.run_request``) on the same request. In embedded mode it
also serves the container's lazy layers. ``stop``/``kill`` signal the container through
runc; SIGTERM to the supervisor is forwarded as in the foreground.

The image is pulled by the command itself first (with progress on its terminal), so the
supervisor finds it local. Must not parse flags or print to the user's terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace

from content.errors import ContentError, FailedPrecondition, Internal
from runtime.errors import CommandNotRunnable
from snapfs.app.runrequest import RunRequest
from snapfs.errors import single_errors

log = logging.getLogger(__name__)

EXIT_SNAPFS_ERROR = 125


async def pull_first(request: RunRequest) -> RunRequest:
    """Make the image local here, with this command's progress (``--pull`` honoured); the
    request the supervisor should run, which then finds it local."""
    from content.descriptor import parse_platform
    from snapfs.app.engine import open_engine
    from snapfs.app.imageops import ensure_image, parse_image_ref
    from snapfs.app.progress import PullProgress

    platform = parse_platform(request.platform) if request.platform else None
    async with open_engine(request.config.load()) as engine:
        await ensure_image(engine, parse_image_ref(request.image),
                           PullProgress(quiet=request.quiet), policy=request.pull,
                           platform=platform)
    return replace(request, pull="missing") if request.pull == "always" else request


def start_detached(request: RunRequest, *, log_level: str = "WARNING") -> str:
    """Start ``request`` under a supervising process; its container id once it runs."""
    r, w = os.pipe()
    try:
        payload = json.dumps({"request": request.to_json(), "notify_fd": w,
                              "log_level": log_level})
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "snapfs.app.detach", payload], pass_fds=(w,),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/")
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    lines = [json.loads(ln) for ln in data.splitlines() if ln.strip()]
    if lines and "started" in lines[-1]:
        return str(lines[-1]["started"])
    if lines and "error" in lines[-1]:
        status = int(lines[-1].get("status", EXIT_SNAPFS_ERROR))
        if status != EXIT_SNAPFS_ERROR:
            raise CommandNotRunnable(str(lines[-1]["error"]), status)
        raise FailedPrecondition(str(lines[-1]["error"]))
    code = proc.wait()
    raise Internal(f"snapfs run -d: the supervising process exited with status {code} "
                   "before the container started")


def _notify(fd: int, obj: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(obj).encode() + b"\n")


def supervise(payload: str) -> int:
    """The supervising process: run the request, tell the command when it started."""
    import trio

    from snapfs.app.run import run_request

    obj = json.loads(payload)
    fd = int(obj["notify_fd"])
    os.set_inheritable(fd, False)
    logging.basicConfig(level=obj.get("log_level", "WARNING"))
    request = replace(RunRequest.from_json(obj["request"]), quiet=True, interactive=False)
    notified = False

    def started(cid: str) -> None:
        nonlocal notified
        _notify(fd, {"started": cid})
        os.close(fd)
        notified = True

    try:
        with single_errors():
            return int(trio.run(lambda: run_request(request, on_started=started,
                                                    log_output=True)))
    except (ContentError, OSError) as exc:
        if notified:
            log.error("detached container: %s", exc)
            return EXIT_SNAPFS_ERROR
        _notify(fd, {"error": str(exc),
                     "status": getattr(exc, "exit_status", EXIT_SNAPFS_ERROR)})
        return int(getattr(exc, "exit_status", EXIT_SNAPFS_ERROR))
    finally:
        if not notified:
            with contextlib.suppress(OSError):
                os.close(fd)


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1]))
