"""The snapshotter's public shape: value types and the ``Snapshots`` protocol.

This is containerd's ``snapshots.Snapshotter`` interface in Python. The in-process
snapshotter (``snapfs.snapshot.snapshotter``) and the gRPC client (``snapfs.client.snapshots``)
both implement it, so the conformance suite and the CLI run the same way against either.

Must not do I/O or import an implementation: it is the shape the others share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol


class Kind(IntEnum):
    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True, slots=True)
class Info:
    name: str
    parent: str = ""
    kind: Kind = Kind.UNKNOWN
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0  # seconds since the epoch
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    size: int = 0
    inodes: int = 0


class Snapshots(Protocol):
    """containerd's snapshotter semantics; every method raises snapfs.errors on failure."""

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...

    async def mounts(self, key: str) -> list[Mount]: ...

    async def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None: ...

    async def remove(self, key: str) -> None: ...

    async def stat(self, key: str) -> Info: ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info: ...

    async def list(self, filters: Sequence[str] = ()) -> list[Info]: ...

    async def usage(self, key: str) -> Usage: ...

    async def cleanup(self) -> None: ...
