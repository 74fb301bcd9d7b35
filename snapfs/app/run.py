"""``snapfs run``: an image reference to a running container, and what it leaves behind.

Pull if needed (``snapfs.app.imageops``), prepare a snapshot and mount it, build the bundle,
run runc to completion, then keep or discard what the container wrote (its record and
bookkeeping are ``snapfs.app.containers``). A startup profile may be recorded on the way.

Must not parse flags or print: the CLI does; this returns the container's exit status.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import trio

from content.descriptor import parse_platform
from content.errors import AlreadyExists, ContentError, FailedPrecondition
from content.image import parse_manifest
from content.profilefile import format_profile, write_profile
from runtime.bundle import Owner, create_bundle, process_start_time
from runtime.container import run_container
from runtime.lookpath import check_command
from runtime.runc import Runc
from runtime.spec import RunOptions, build_spec, stop_signal
from snapfs.app.containers import (
    SNAPSHOT_PREFIX,
    STOP_TIMEOUT,
    ContainerRecord,
    discard,
    list_containers,
    write_record,
)
from snapfs.app.engine import Engine, open_engine
from snapfs.app.imageops import PullPolicy, ensure_image, image_config, parse_image_ref
from snapfs.app.images import ImageRecord
from snapfs.app.lazyerrors import new_errors, read_errors
from snapfs.app.progress import PullProgress
from snapfs.app.pull import Progress
from snapfs.app.records import LOG
from snapfs.app.runrequest import ProfileRequest, RunRequest
from snapfs.client.status import RemoteRecording, status_socket
from snapfs.lazy.layers import layer_id
from snapfs.lazy.profile import LocalRecording
from snapfs.snapshot.mounting import mount_all
from snapfs.sys.mountops import unmount_all

log = logging.getLogger(__name__)


class _Recording(Protocol):
    async def stop(self) -> list[str]: ...
    async def aclose(self) -> None: ...


async def _start_recording(engine: Engine, record: ImageRecord) -> _Recording:
    """Record where the image's lazy layers are served: here (embedded) or in the daemon,
    through its status socket."""
    manifest = parse_manifest(engine.store.read(record.target.digest))
    layers = [layer_id(d.digest) for d in manifest.layers]
    if engine.mode == "daemon":
        return await RemoteRecording.start(status_socket(engine.config.state), layers)
    if engine.lazy is None:
        raise FailedPrecondition(f"--record-profile: image {record.name}: this process serves "
                                 "no lazy layers, so there is nothing to record")
    return await LocalRecording.start(engine.lazy, layers)


async def _stop_after(recording: _Recording, seconds: float) -> None:
    await trio.sleep(seconds)
    await recording.stop()


async def run(engine: Engine, image: str, opts: RunOptions, *, name: str | None = None,
              remove: bool = False, progress: Progress | None = None,
              on_started: Callable[[str], None] | None = None,
              stop_timeout: float | None = STOP_TIMEOUT, stdin: int | None = None,
              stdout: int | None = None, stderr: int | None = None,
              profile: ProfileRequest | None = None, interactive: bool = True,
              log_output: bool = False, pull: PullPolicy = "missing",
              platform: str | None = None) -> int:
    """Pull if needed, then run ``image`` to completion; returns the container's exit status.

    A container that never started (bad user, no command, mount failure) leaves nothing.
    ``on_started`` is called with the container id once it runs. Without ``interactive``
    (``-i``) or a tty its stdin is /dev/null. ``log_output``: its stdout and stderr go to
    ``<container dir>/log`` (a detached container). ``profile``: record the files it reads
    through the lazy layers (``snapfs.lazy.profile``).
    """
    ref = parse_image_ref(image)
    if name is not None and any(c.name == name for c in list_containers(engine)):
        raise AlreadyExists(f"container name {name!r} is already in use")
    record = await ensure_image(engine, ref, progress, policy=pull,
                                platform=parse_platform(platform) if platform else None)
    config = image_config(engine, record)
    cid = secrets.token_hex(8)
    cdir = engine.containers_dir / cid
    rootfs = cdir / "rootfs"
    rec = ContainerRecord(cid, name or cid[:12], str(ref), SNAPSHOT_PREFIX + cid, remove,
                          Owner(os.getpid(), process_start_time(os.getpid())), time.time(),
                          stop_signal=stop_signal(config), detached=log_output)
    # Built aside and renamed into place, so that a concurrent cleanup never sees a
    # container directory without its record.
    new = engine.containers_dir / f".new-{cid}"
    (new / "rootfs").mkdir(parents=True)
    write_record(new, rec)
    new.rename(cdir)
    fds: list[int] = []
    if log_output:
        fds.append(os.open(cdir / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o640))
        stdout = stderr = fds[-1]
    if not interactive and not opts.tty:
        fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        stdin = fds[-1]
    runc = Runc(root=engine.runc_root)
    errors_before = await read_errors(engine)
    mounted = started = False
    status: int | None = None
    recording: _Recording | None = None
    try:
        parent = str(record.top_chain_id) if record.top_chain_id else ""
        if profile is not None:
            # Before the Prepare, so that its mounts use the layers' FUSE directories (which
            # the recording sees) even for layers the background fetch already made local.
            # What building the bundle reads (/etc/passwd, /etc/group) is recorded too: the
            # start of this container needs it as well.
            recording = await _start_recording(engine, record)
        mounts = await engine.snapshots.prepare(rec.snapshot, parent)
        await mount_all(mounts, rootfs)
        mounted = True
        # The rootfs may sit on this process's own FUSE mount: never touch it from the loop.
        spec = await trio.to_thread.run_sync(build_spec, config, opts, rootfs)
        # Say "not found" (127) or "not executable" (126) in one line, before runc would.
        process = spec["process"]
        await trio.to_thread.run_sync(lambda: check_command(
            rootfs, process["args"][0], env=process["env"], cwd=process["cwd"],
            volumes=[v.destination for v in opts.volumes]))
        bundle = create_bundle(engine.config.state / "bundles" / cid, spec)
        started = True
        async with trio.open_nursery() as nursery:
            if recording is not None and profile is not None and profile.seconds is not None:
                nursery.start_soon(_stop_after, recording, profile.seconds)
            status = await run_container(
                runc, cid, bundle, tty=opts.tty, stop_timeout=stop_timeout, stdin=stdin,
                stdout=stdout, stderr=stderr,
                on_start=None if on_started is None else lambda: on_started(cid))
            nursery.cancel_scope.cancel()
        if recording is not None and profile is not None:
            paths = await recording.stop()
            text = format_profile(paths, image=str(ref))
            await trio.to_thread.run_sync(write_profile, profile.dest, text)
            log.info("container %s: profile of %d file(s) written to %s", cid, len(paths),
                     profile.dest)
        return status
    finally:
        for fd in fds:
            os.close(fd)
        with trio.CancelScope(shield=True):
            if status != 0:
                await _say_read_errors(engine, cid, errors_before)
            if recording is not None:
                await recording.aclose()
            if mounted:
                await unmount_all(rootfs)
            if remove or not started:
                await discard(engine, cdir, rec.snapshot)
            else:
                write_record(cdir, replace(rec, finished=time.time(), exit_code=status))


async def _say_read_errors(engine: Engine, cid: str, before: dict[str, str]) -> None:
    """The container failed: name each lazy read that failed meanwhile (registry,
    repository, blob), since the container itself saw only EIO."""
    try:
        errors = new_errors(before, await read_errors(engine))
    except (ContentError, OSError) as exc:
        log.debug("container %s: lazy layers' errors unavailable: %s", cid, exc)
        return
    for error in errors:
        log.error("container %s: a lazy read failed (the container saw EIO): %s", cid, error)


async def run_request(request: RunRequest, *,
                      on_started: Callable[[str], None] | None = None,
                      log_output: bool = False) -> int:
    """Run ``request`` on the engine its config names: the container's exit status."""
    async with open_engine(request.config.load()) as engine:
        return await run(engine, request.image, request.options, name=request.name,
                         remove=request.remove, progress=PullProgress(quiet=request.quiet),
                         on_started=on_started, stop_timeout=request.stop_timeout,
                         profile=request.profile, interactive=request.interactive,
                         log_output=log_output, pull=request.pull, platform=request.platform)
