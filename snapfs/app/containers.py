"""Containers started by ``snapfs run``: their records, listing, removal and crash cleanup.

    <state>/containers/<id>/record.json   who runs it (pid + start time), image, snapshot key,
                                          and once it ended, when and with which status
    <state>/containers/<id>/rootfs        the snapshot's mounts while it runs
    <state>/bundles/<id>/                 the OCI bundle (runtime.bundle)
    <state>/runc/                         runc's own state

As with docker: a ``--rm`` container goes away with everything it wrote; any other container's
record and snapshot (its writes) stay after it exits, listed by ``ps -a``, until ``rm``.

A container whose owning snapfs process is gone (SIGKILL) is cleaned up by the next client
command (``snapfs.app.engine`` calls :func:`cleanup_stale_containers`): its runc container and
bundle (``runtime.container.cleanup_stale``), its rootfs mount, and — for ``--rm`` — its
snapshot. Running one is ``snapfs.app.run``; this module takes a :class:`ContainerHost`, not
the engine, so the engine can clean up through it.

Must not pull images or open an engine: it works on the small ``ContainerHost`` protocol.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import trio

from content.errors import FailedPrecondition, NotFound
from runtime.container import cleanup_stale
from runtime.runc import Runc
from snapfs.app.records import (
    SNAPSHOT_PREFIX,
    STOP_TIMEOUT,
    ContainerRecord,
    container_dirs,
    find_record,
    list_records,
    read_record,
    write_record,
)
from snapfs.config import Config
from snapfs.snapshot.types import Snapshots
from snapfs.sys.mountops import unmount_all

log = logging.getLogger(__name__)


class ContainerHost(Protocol):
    """What container bookkeeping needs of an engine."""

    @property
    def config(self) -> Config: ...
    @property
    def snapshots(self) -> Snapshots: ...
    @property
    def containers_dir(self) -> Path: ...
    @property
    def runc_root(self) -> Path: ...


async def discard(engine: ContainerHost, cdir: Path, snapshot: str) -> None:
    if snapshot:
        with contextlib.suppress(NotFound):
            await engine.snapshots.remove(snapshot)
    await trio.to_thread.run_sync(lambda: shutil.rmtree(cdir, ignore_errors=True))


def list_containers(engine: ContainerHost) -> list[ContainerRecord]:
    """Every container record, oldest first."""
    return list_records(engine.containers_dir)


def find_container(engine: ContainerHost, ident: str) -> ContainerRecord:
    """A container by name, full id or unique id prefix."""
    return find_record(engine.containers_dir, ident)


async def remove_container(engine: ContainerHost, ident: str) -> ContainerRecord:
    """Delete a finished container: its record and its snapshot (what it wrote)."""
    rec = find_container(engine, ident)
    if rec.status == "running":
        raise FailedPrecondition(f"container {rec.name} ({rec.id}): still running")
    cdir = engine.containers_dir / rec.id
    await unmount_all(cdir / "rootfs")
    await discard(engine, cdir, rec.snapshot)
    return rec


async def cleanup_stale_containers(engine: ContainerHost) -> list[str]:
    """Undo what killed ``snapfs run`` processes left: containers, bundles, mounts, snapshots."""
    cleaned: list[str] = []
    bundles = engine.config.state / "bundles"
    # Only ask runc when it may know something: `snapfs images` needs no runc otherwise.
    if _nonempty(engine.runc_root) or _nonempty(bundles):
        cleaned = await cleanup_stale(Runc(root=engine.runc_root), bundles)
    if not engine.containers_dir.is_dir():
        return cleaned
    for cdir in container_dirs(engine.containers_dir):
        rec = read_record(cdir)
        if rec is not None and rec.status != "dead":
            continue
        await unmount_all(cdir / "rootfs")
        if rec is None or rec.remove:
            await discard(engine, cdir, rec.snapshot if rec else "")
        else:  # kept, as after a normal exit; what it wrote stays until `snapfs rm`
            write_record(cdir, replace(rec, finished=time.time()))
        log.info("cleaned up after container %s, whose snapfs process is gone", cdir.name)
        cleaned.append(cdir.name)
    return cleaned


def _nonempty(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError:
        return False


__all__ = ["SNAPSHOT_PREFIX", "STOP_TIMEOUT", "ContainerHost", "ContainerRecord",
           "cleanup_stale_containers", "discard", "find_container", "list_containers",
           "remove_container", "write_record"]
