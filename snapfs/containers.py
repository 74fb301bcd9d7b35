"""``snapfs run``: an image reference to a running container, and everything it leaves behind.

    <state>/containers/<id>/record.json   who runs it (pid + start time), image, snapshot key,
                                          and once it ended, when and with which status
    <state>/containers/<id>/rootfs        the snapshot's mounts while it runs
    <state>/bundles/<id>/                 the OCI bundle (runtime.bundle)
    <state>/runc/                         runc's own state

As with docker: a ``--rm`` container goes away with everything it wrote; any other container's
record and snapshot (its writes) stay after it exits, listed by ``ps -a``, until ``rm``.

A container whose owning snapfs process is gone (SIGKILL) is cleaned up by the next client
command (snapfs.engine calls :func:`cleanup_stale_containers`): its runc container and bundle
(runtime.container.cleanup_stale), its rootfs mount, and — for ``--rm`` — its snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import trio

from content.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from content.image import parse_config, parse_manifest
from content.reference import Reference, parse_reference
from runtime.bundle import Owner, create_bundle, owner_alive, process_start_time
from runtime.container import cleanup_stale, run_container
from runtime.runc import Runc
from runtime.spec import RunOptions, build_spec
from snapfs.images import ImageRecord
from snapfs.mounts import mount_all, unmount_all
from snapfs.profile import LocalRecording, format_profile, write_profile
from snapfs.pull import Progress, Puller
from snapfs.remote import layer_id
from snapfs.status import RemoteRecording, status_socket

if TYPE_CHECKING:
    from snapfs.engine import Engine

log = logging.getLogger(__name__)

RECORD = "record.json"
SNAPSHOT_PREFIX = "snapfs-run-"
STOP_TIMEOUT = 10.0  # docker stop's default grace period
Status = Literal["running", "exited", "dead"]


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    id: str
    name: str
    image: str
    snapshot: str
    remove: bool
    owner: Owner
    created: float
    finished: float | None = None
    exit_code: int | None = None  # None once finished: its snapfs was killed, status unknown

    @property
    def status(self) -> Status:
        """``dead``: its snapfs process is gone and nobody has cleaned up after it yet."""
        if self.finished is not None:
            return "exited"
        return "running" if owner_alive(self.owner) else "dead"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "snapshot": self.snapshot,
                "remove": self.remove, "owner": {"pid": self.owner.pid, "start": self.owner.start},
                "created": self.created, "finished": self.finished, "exit_code": self.exit_code}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ContainerRecord:
        owner = obj["owner"]
        finished, code = obj.get("finished"), obj.get("exit_code")
        return cls(obj["id"], obj["name"], obj["image"], obj["snapshot"], bool(obj["remove"]),
                   Owner(int(owner["pid"]), owner.get("start")), float(obj["created"]),
                   None if finished is None else float(finished),
                   None if code is None else int(code))


def parse_image_ref(text: str) -> Reference:
    """``text`` as an image reference; InvalidArgument ("invalid reference format…") if not."""
    first, sep, _ = text.partition("/")
    # parse_reference, like docker's parser, takes an upper-case first component for a
    # registry host ("UPPER/case"). No registry is named that way in practice; a user who
    # typed it meant a repository, and repositories are lower case: say so, send no request.
    if sep and first != first.lower() and not any(c in first for c in ".:["):
        raise InvalidArgument(f"invalid reference format {text!r}: repository name must be "
                              "lowercase")
    try:
        return parse_reference(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid reference format: {exc}") from exc


def local_image(engine: Engine, ref: Reference) -> ImageRecord | None:
    """The image record for ``ref``: by name, or for ``repo@digest`` any record of that
    repository whose manifest has that digest."""
    try:
        return engine.images.get(str(ref))
    except NotFound:
        pass
    if ref.digest is None:
        return None
    for record in engine.images.list():
        if record.target.digest == ref.digest and record_locator(record) == ref.locator:
            return record
    return None


def record_locator(record: ImageRecord) -> str:
    with contextlib.suppress(InvalidArgument):
        return parse_reference(record.name).locator
    return ""


async def ensure_image(engine: Engine, ref: Reference,
                       progress: Progress | None = None) -> ImageRecord:
    """The local image if there is one (no registry request, as ``docker run`` does), else pull."""
    record = local_image(engine, ref)
    if record is not None and await _is_complete(engine, record):
        return record
    puller = Puller(engine.registry, engine.store, engine.snapshots, engine.images,
                    progress=progress)
    return (await puller.pull(ref)).record


async def _is_complete(engine: Engine, record: ImageRecord) -> bool:
    if not engine.store.exists(record.config):
        return False
    top = record.top_chain_id
    if top is None:
        return True
    try:
        await engine.snapshots.stat(str(top))
    except NotFound:
        return False
    return True


def image_config(engine: Engine, record: ImageRecord) -> dict[str, Any]:
    """The runtime part (``config``) of the image's config document."""
    return dict(parse_config(engine.store.read(record.config)).raw.get("config") or {})


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    """``--record-profile FILE [--record-seconds N]``: write the files the container reads
    from its start until it exits (or for ``seconds``) to ``dest``."""

    dest: Path
    seconds: float | None = None


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
    return LocalRecording(engine.lazy.fs, layers)


async def _stop_after(recording: _Recording, seconds: float) -> None:
    await trio.sleep(seconds)
    await recording.stop()


def _write_record(cdir: Path, rec: ContainerRecord) -> None:
    tmp = cdir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(rec.to_json()))
    os.replace(tmp, cdir / RECORD)


async def run(engine: Engine, image: str, opts: RunOptions, *, name: str | None = None,
              remove: bool = False, progress: Progress | None = None,
              on_started: Callable[[str], None] | None = None,
              stop_timeout: float | None = STOP_TIMEOUT, stdin: int | None = None,
              stdout: int | None = None, stderr: int | None = None,
              profile: ProfileRequest | None = None) -> int:
    """Pull if needed, then run ``image`` to completion; returns the container's exit status.

    A container that never started (bad user, no command, mount failure) leaves nothing.
    ``profile``: record the files it reads through the lazy layers (``snapfs.profile``).
    """
    ref = parse_image_ref(image)
    if name is not None and any(c.name == name for c in list_containers(engine)):
        raise AlreadyExists(f"container name {name!r} is already in use")
    record = await ensure_image(engine, ref, progress)
    config = image_config(engine, record)
    cid = secrets.token_hex(8)
    cdir = engine.containers_dir / cid
    rootfs = cdir / "rootfs"
    rec = ContainerRecord(cid, name or cid[:12], str(ref), SNAPSHOT_PREFIX + cid, remove,
                          Owner(os.getpid(), process_start_time(os.getpid())), time.time())
    # Built aside and renamed into place, so that a concurrent cleanup never sees a
    # container directory without its record.
    new = engine.containers_dir / f".new-{cid}"
    (new / "rootfs").mkdir(parents=True)
    _write_record(new, rec)
    new.rename(cdir)
    runc = Runc(root=engine.runc_root)
    mounted = started = False
    status: int | None = None
    try:
        parent = str(record.top_chain_id) if record.top_chain_id else ""
        mounts = await engine.snapshots.prepare(rec.snapshot, parent)
        await mount_all(mounts, rootfs)
        mounted = True
        # The rootfs may sit on this process's own FUSE mount: never touch it from the loop.
        spec = await trio.to_thread.run_sync(build_spec, config, opts, rootfs)
        bundle = create_bundle(engine.config.state / "bundles" / cid, spec)
        recording = await _start_recording(engine, record) if profile is not None else None
        if on_started is not None:
            on_started(cid)
        started = True
        try:
            async with trio.open_nursery() as nursery:
                if recording is not None and profile is not None and profile.seconds is not None:
                    nursery.start_soon(_stop_after, recording, profile.seconds)
                status = await run_container(runc, cid, bundle, tty=opts.tty,
                                             stop_timeout=stop_timeout, stdin=stdin,
                                             stdout=stdout, stderr=stderr)
                nursery.cancel_scope.cancel()
            if recording is not None and profile is not None:
                paths = await recording.stop()
                text = format_profile(paths, image=str(ref))
                await trio.to_thread.run_sync(write_profile, profile.dest, text)
                log.info("container %s: profile of %d file(s) written to %s", cid, len(paths),
                         profile.dest)
        finally:
            if recording is not None:
                with trio.CancelScope(shield=True):
                    await recording.aclose()
        return status
    finally:
        with trio.CancelScope(shield=True):
            if mounted:
                await unmount_all(rootfs)
            if remove or not started:
                await _discard(engine, cdir, rec.snapshot)
            else:
                _write_record(cdir, replace(rec, finished=time.time(), exit_code=status))


async def _discard(engine: Engine, cdir: Path, snapshot: str) -> None:
    if snapshot:
        with contextlib.suppress(NotFound):
            await engine.snapshots.remove(snapshot)
    await trio.to_thread.run_sync(lambda: shutil.rmtree(cdir, ignore_errors=True))


def list_containers(engine: Engine) -> list[ContainerRecord]:
    """Every container record, oldest first."""
    out = []
    if engine.containers_dir.is_dir():
        for cdir in _container_dirs(engine):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                out.append(ContainerRecord.from_json(json.loads((cdir / RECORD).read_text())))
    return sorted(out, key=lambda r: r.created)


def find_container(engine: Engine, ident: str) -> ContainerRecord:
    """A container by name, full id or unique id prefix."""
    records = list_containers(engine)
    exact = [r for r in records if ident in (r.id, r.name)]
    if exact:
        return exact[0]
    prefixed = [r for r in records if r.id.startswith(ident)] if ident else []
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise InvalidArgument(f"container {ident}: prefix matches {len(prefixed)} containers")
    raise NotFound(f"container {ident}: no such container")


async def remove_container(engine: Engine, ident: str) -> ContainerRecord:
    """Delete a finished container: its record and its snapshot (what it wrote)."""
    rec = find_container(engine, ident)
    if rec.status == "running":
        raise FailedPrecondition(f"container {rec.name} ({rec.id}): still running")
    cdir = engine.containers_dir / rec.id
    await unmount_all(cdir / "rootfs")
    await _discard(engine, cdir, rec.snapshot)
    return rec


async def cleanup_stale_containers(engine: Engine) -> list[str]:
    """Undo what killed ``snapfs run`` processes left: containers, bundles, mounts, snapshots."""
    cleaned: list[str] = []
    bundles = engine.config.state / "bundles"
    # Only ask runc when it may know something: `snapfs images` needs no runc otherwise.
    if _nonempty(engine.runc_root) or _nonempty(bundles):
        cleaned = await cleanup_stale(Runc(root=engine.runc_root), bundles)
    if not engine.containers_dir.is_dir():
        return cleaned
    for cdir in _container_dirs(engine):
        try:
            rec: ContainerRecord | None = ContainerRecord.from_json(
                json.loads((cdir / RECORD).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            rec = None
        if rec is not None and rec.status != "dead":
            continue
        await unmount_all(cdir / "rootfs")
        if rec is None or rec.remove:
            await _discard(engine, cdir, rec.snapshot if rec else "")
        else:  # kept, as after a normal exit; what it wrote stays until `snapfs rm`
            _write_record(cdir, replace(rec, finished=time.time()))
        log.info("cleaned up after container %s, whose snapfs process is gone", cdir.name)
        cleaned.append(cdir.name)
    return cleaned


def _container_dirs(engine: Engine) -> list[Path]:
    return [p for p in engine.containers_dir.iterdir() if not p.name.startswith(".")]


def _nonempty(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError:
        return False
