"""Container records: what ``snapfs run`` writes about each container, and reading them back.

    <state>/containers/<id>/record.json   who runs it (pid + start time of the process that
                                          waits for runc), image, snapshot key, stop signal,
                                          and once it ended, when and with which status
    <state>/containers/<id>/log           a detached container's output (stdout and stderr)

Plain synchronous file reads, no trio and no engine: ``snapfs ps`` and the start-up checks
of every command read records without paying for either (``snapfs.app.listing``).

Must not run runc, mount or remove anything: lifecycles are ``snapfs.app.containers``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from content.errors import InvalidArgument, NotFound
from runtime.bundle import Owner, owner_alive

RECORD = "record.json"
LOG = "log"
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
    stop_signal: int = signal.SIGTERM
    detached: bool = False  # output in <dir>/log, owned by a supervising snapfs process

    @property
    def status(self) -> Status:
        """``dead``: its snapfs process is gone and nobody has cleaned up after it yet."""
        if self.finished is not None:
            return "exited"
        return "running" if owner_alive(self.owner) else "dead"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "snapshot": self.snapshot,
                "remove": self.remove, "owner": {"pid": self.owner.pid, "start": self.owner.start},
                "created": self.created, "finished": self.finished, "exit_code": self.exit_code,
                "stop_signal": self.stop_signal, "detached": self.detached}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ContainerRecord:
        owner = obj["owner"]
        finished, code = obj.get("finished"), obj.get("exit_code")
        return cls(obj["id"], obj["name"], obj["image"], obj["snapshot"], bool(obj["remove"]),
                   Owner(int(owner["pid"]), owner.get("start")), float(obj["created"]),
                   None if finished is None else float(finished),
                   None if code is None else int(code),
                   int(obj.get("stop_signal", signal.SIGTERM)), bool(obj.get("detached", False)))


def write_record(cdir: Path, rec: ContainerRecord) -> None:
    tmp = cdir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(rec.to_json()))
    os.replace(tmp, cdir / RECORD)


def read_record(cdir: Path) -> ContainerRecord | None:
    """The record in ``cdir``, or None when it is missing or unreadable."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return ContainerRecord.from_json(json.loads((cdir / RECORD).read_text()))
    return None


def container_dirs(containers_dir: Path) -> list[Path]:
    """Every container directory (``.new-*`` ones being built are not containers yet)."""
    try:
        return [p for p in containers_dir.iterdir() if not p.name.startswith(".")]
    except OSError:
        return []


def list_records(containers_dir: Path) -> list[ContainerRecord]:
    """Every readable container record, oldest first."""
    out = [r for r in map(read_record, container_dirs(containers_dir)) if r is not None]
    return sorted(out, key=lambda r: r.created)


def find_record(containers_dir: Path, ident: str) -> ContainerRecord:
    """A container by name, full id or unique id prefix."""
    records = list_records(containers_dir)
    exact = [r for r in records if ident in (r.id, r.name)]
    if exact:
        return exact[0]
    prefixed = [r for r in records if r.id.startswith(ident)] if ident else []
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise InvalidArgument(f"container {ident}: prefix matches {len(prefixed)} containers")
    raise NotFound(f"container {ident}: no such container")


__all__ = ["LOG", "RECORD", "SNAPSHOT_PREFIX", "STOP_TIMEOUT", "ContainerRecord", "Status",
           "container_dirs", "find_record", "list_records", "read_record", "write_record"]
