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
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import trio

from content.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.bundle import Owner, owner_alive
from runtime.container import cleanup_stale
from runtime.runc import Runc
from snapfs.config import Config
from snapfs.snapshot.types import Snapshots
from snapfs.sys.mountops import unmount_all

log = logging.getLogger(__name__)

RECORD = "record.json"
SNAPSHOT_PREFIX = "snapfs-run-"
STOP_TIMEOUT = 10.0  # docker stop's default grace period
Status = Literal["running", "exited", "dead"]


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


def write_record(cdir: Path, rec: ContainerRecord) -> None:
    tmp = cdir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(rec.to_json()))
    os.replace(tmp, cdir / RECORD)



async def discard(engine: ContainerHost, cdir: Path, snapshot: str) -> None:
    if snapshot:
        with contextlib.suppress(NotFound):
            await engine.snapshots.remove(snapshot)
    await trio.to_thread.run_sync(lambda: shutil.rmtree(cdir, ignore_errors=True))


def list_containers(engine: ContainerHost) -> list[ContainerRecord]:
    """Every container record, oldest first."""
    out = []
    if engine.containers_dir.is_dir():
        for cdir in _container_dirs(engine):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                out.append(ContainerRecord.from_json(json.loads((cdir / RECORD).read_text())))
    return sorted(out, key=lambda r: r.created)


def find_container(engine: ContainerHost, ident: str) -> ContainerRecord:
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
            await discard(engine, cdir, rec.snapshot if rec else "")
        else:  # kept, as after a normal exit; what it wrote stays until `snapfs rm`
            write_record(cdir, replace(rec, finished=time.time()))
        log.info("cleaned up after container %s, whose snapfs process is gone", cdir.name)
        cleaned.append(cdir.name)
    return cleaned


def _container_dirs(engine: ContainerHost) -> list[Path]:
    return [p for p in engine.containers_dir.iterdir() if not p.name.startswith(".")]


def _nonempty(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError:
        return False
