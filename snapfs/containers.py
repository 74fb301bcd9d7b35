"""``snapfs run``: an image reference to a running container, and everything it leaves behind.

    <state>/containers/<id>/record.json   who runs it (pid + start time), image, snapshot key
    <state>/containers/<id>/rootfs        the snapshot's mounts
    <state>/bundles/<id>/                 the OCI bundle (runtime.bundle)
    <state>/runc/                         runc's own state

A container whose owning snapfs process is gone (SIGKILL) is cleaned up by the next command:
its runc container and bundle (runtime.container.cleanup_stale), its rootfs mount, and — for
``--rm`` containers — its snapshot.
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
from dataclasses import dataclass
from typing import Any

import trio

from content.errors import AlreadyExists, InvalidArgument, NotFound
from content.reference import Reference, parse_reference
from runtime.bundle import Owner, create_bundle, owner_alive, process_start_time
from runtime.container import cleanup_stale, run_container
from runtime.runc import Runc
from runtime.spec import RunOptions, build_spec
from snapfs.engine import Engine
from snapfs.images import ImageRecord
from snapfs.mounts import mount_all, unmount_all
from snapfs.pull import Progress, Puller

log = logging.getLogger(__name__)

RECORD = "record.json"
SNAPSHOT_PREFIX = "snapfs-run-"


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    id: str
    name: str
    image: str
    snapshot: str
    remove: bool
    owner: Owner
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "snapshot": self.snapshot,
                "remove": self.remove, "owner": {"pid": self.owner.pid, "start": self.owner.start},
                "created": self.created}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ContainerRecord:
        owner = obj["owner"]
        return cls(obj["id"], obj["name"], obj["image"], obj["snapshot"], bool(obj["remove"]),
                   Owner(int(owner["pid"]), owner.get("start")), float(obj["created"]))


def parse_image_ref(text: str) -> Reference:
    try:
        return parse_reference(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid reference format: {exc}") from exc


async def ensure_image(engine: Engine, ref: Reference,
                       progress: Progress | None = None) -> ImageRecord:
    """The local image if there is one (no registry request, as ``docker run`` does), else pull."""
    try:
        record = engine.images.get(str(ref))
    except NotFound:
        record = None
    if record is not None and await _snapshot_exists(engine, record):
        return record
    puller = Puller(engine.registry, engine.store, engine.snapshots, engine.images,
                    progress=progress)
    return (await puller.pull(ref)).record


async def _snapshot_exists(engine: Engine, record: ImageRecord) -> bool:
    top = record.top_chain_id
    if top is None:
        return True
    try:
        await engine.snapshots.stat(str(top))
    except NotFound:
        return False
    return True


def image_config(engine: Engine, record: ImageRecord) -> dict[str, Any]:
    config = json.loads(engine.store.read(record.config))
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise InvalidArgument(f"image {record.name}: malformed config")
    return inner


async def run(engine: Engine, image: str, opts: RunOptions, *, name: str | None = None,
              remove: bool = False, progress: Progress | None = None,
              on_started: Callable[[str], None] | None = None) -> int:
    """Pull if needed, then run ``image`` to completion; returns the container's exit status."""
    await cleanup_stale_containers(engine)
    ref = parse_image_ref(image)
    record = await ensure_image(engine, ref, progress)
    config = image_config(engine, record)
    cid = secrets.token_hex(8)
    cdir = engine.containers_dir / cid
    rootfs = cdir / "rootfs"
    key = SNAPSHOT_PREFIX + cid
    rec = ContainerRecord(cid, name or cid[:12], str(ref), key, remove,
                          Owner(os.getpid(), process_start_time(os.getpid())), time.time())
    rootfs.mkdir(parents=True)
    (cdir / RECORD).write_text(json.dumps(rec.to_json()))
    runc = Runc(root=engine.runc_root)
    mounted = False
    try:
        parent = str(record.top_chain_id) if record.top_chain_id else ""
        try:
            mounts = await engine.snapshots.prepare(key, parent)
        except AlreadyExists:
            mounts = await engine.snapshots.mounts(key)
        await mount_all(mounts, rootfs)
        mounted = True
        spec = build_spec(config, opts, rootfs)
        bundle = create_bundle(engine.config.state / "bundles" / cid, spec)
        if on_started is not None:
            on_started(cid)
        return await run_container(runc, cid, bundle, tty=opts.tty)
    finally:
        with trio.CancelScope(shield=True):
            if mounted:
                await unmount_all(rootfs)
            if remove:
                with contextlib.suppress(NotFound):
                    await engine.snapshots.remove(key)
            shutil.rmtree(cdir, ignore_errors=True)


def list_containers(engine: Engine) -> list[ContainerRecord]:
    out = []
    if engine.containers_dir.is_dir():
        for cdir in sorted(engine.containers_dir.iterdir()):
            try:
                out.append(ContainerRecord.from_json(json.loads((cdir / RECORD).read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


async def cleanup_stale_containers(engine: Engine) -> list[str]:
    """Undo what killed ``snapfs run`` processes left: containers, bundles, mounts, snapshots."""
    cleaned = await cleanup_stale(Runc(root=engine.runc_root), engine.config.state / "bundles")
    if not engine.containers_dir.is_dir():
        return cleaned
    for cdir in list(engine.containers_dir.iterdir()):
        try:
            rec: ContainerRecord | None = ContainerRecord.from_json(
                json.loads((cdir / RECORD).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            rec = None
        if rec is not None and owner_alive(rec.owner):
            continue
        await unmount_all(cdir / "rootfs")
        if rec is not None and rec.remove:
            with contextlib.suppress(NotFound):
                await engine.snapshots.remove(rec.snapshot)
        shutil.rmtree(cdir, ignore_errors=True)
        log.info("cleaned up stale container dir %s", cdir.name)
        cleaned.append(cdir.name)
    return cleaned
