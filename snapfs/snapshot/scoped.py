"""Which client's snapshots are which: one root shared by containerd and snapfs's commands.

Every request names its client (the ``snapshotter`` field: containerd's proxy sends its
plugin's name, snapfs's commands :data:`CLIENT_SCOPE`, in-process or through a daemon alike).
Each snapshot records the clients that hold it (``SnapshotRecord.scopes``). containerd's GC
lists every snapshot it can see and removes those its own metadata does not know, so what
another client made must not be visible to it, nor removable by it:

- a client sees (List, Stat, Mounts, Update, Usage, Remove, a parent) only what it holds;
  a record without scopes (from before they existed) is held by all;
- what a client creates it holds, and with it every ancestor (a visible snapshot's parents
  are visible); a remote layer's chain-ID snapshot that already exists, or a name its commit
  finds taken, becomes held by this client too — both clients then use the same snapshot;
- Remove by one of several holders only drops its hold (the snapshot stays for the others);
  by the last holder it is containerd's Remove (FailedPrecondition while it has children);
- a running container's snapshot is active, held by its one client, and its parents have a
  child: no other client's GC can take any of it.

``scope=None`` is the whole root (the daemon's metrics and status, tests of the store).
Names stay global: a key taken by another client is AlreadyExists (containerd's keys carry
its namespace and a counter, so they never meet snapfs's).

Pure rules over a metastore ``Transaction`` plus :class:`ScopedSnapshots`, the ``Snapshots``
a client gets; must not touch the filesystem (the snapshotter brackets that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from content.filters import parse_filters
from snapfs.errors import FailedPrecondition, NotFound
from snapfs.snapshot.metastore import SnapshotRecord, Transaction
from snapfs.snapshot.types import Info, Mount, Snapshots, Usage

log = logging.getLogger(__name__)

CLIENT_SCOPE = "snapfs.io/cli"  # no TOML section name of a proxy plugin would be this

Scope = str | None


def visible(rec: SnapshotRecord, scope: Scope) -> bool:
    return scope is None or not rec.scopes or scope in rec.scopes


def get(tx: Transaction, key: str, scope: Scope) -> SnapshotRecord:
    """``key`` as ``scope`` sees it: NotFound when another client holds it alone."""
    rec = tx.find(key)
    if rec is None or not visible(rec, scope):
        raise NotFound(f"snapshot {key} not found")
    return rec


def created_scopes(scope: Scope) -> frozenset[str]:
    return frozenset() if scope is None else frozenset((scope,))


def hold(tx: Transaction, key: str, scope: Scope) -> None:
    """``scope`` holds ``key`` and every ancestor of it from now on."""
    if scope is None:
        return
    while key:
        rec = tx.get(key)
        if rec.scopes and scope not in rec.scopes:
            tx.set_scopes(rec, rec.scopes | {scope})
        key = rec.parent


def hold_parent(tx: Transaction, key: str, parent: str, scope: Scope) -> None:
    """Before ``key`` is created on ``parent`` for ``scope``: ``parent`` must be visible to
    it (the record's create reports one that does not exist), and is held by it from now."""
    rec = tx.find(parent) if parent else None
    if rec is None:
        return
    if not visible(rec, scope):
        raise NotFound(f"snapshot {key}: parent snapshot {parent} not found")
    hold(tx, parent, scope)


def release(tx: Transaction, key: str, scope: Scope) -> bool:
    """Remove of ``key`` by ``scope``: True if that only dropped its hold (others hold it);
    False if ``scope`` is its last holder, so it is to be removed."""
    rec = get(tx, key, scope)
    others = rec.scopes - {scope} if scope is not None else frozenset()
    if not others:
        return False  # the record's own remove refuses while it has children
    if any(visible(child, scope) for child in tx.children(rec)):
        raise FailedPrecondition(f"cannot remove snapshot {key}: it has children")
    tx.set_scopes(rec, others)
    log.info("snapshot %s: released by %s, still held by %s", key, scope,
             ", ".join(sorted(others)))
    return True


def listed(records: Iterable[SnapshotRecord], filters: Sequence[str],
           scope: Scope) -> list[SnapshotRecord]:
    """What a List by ``scope`` with ``filters`` (containerd's syntax, OR-ed) shows."""
    flt = parse_filters(filters)
    return [r for r in records if visible(r, scope) and flt.match(_lookup(r))]


def _lookup(rec: SnapshotRecord) -> Callable[[Sequence[str]], str | None]:
    """containerd's adaptSnapshot: the fields a List filter may name."""

    def lookup(path: Sequence[str]) -> str | None:
        if not path:
            return None
        head = path[0]
        if len(path) == 1:
            if head == "name":
                return rec.key
            if head == "parent":
                return rec.parent
            if head == "kind":
                return rec.kind.name.lower()
            return None
        if head == "labels":
            return rec.labels.get(".".join(path[1:]))
        return None

    return lookup


class ScopeAware(Protocol):
    """The snapshotter's methods, each taking the client it serves."""

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None,
                      *, scope: Scope = None) -> list[Mount]: ...
    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None,
                   *, scope: Scope = None) -> list[Mount]: ...
    async def mounts(self, key: str, *, scope: Scope = None) -> list[Mount]: ...
    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None,
                     *, scope: Scope = None) -> None: ...
    async def remove(self, key: str, *, scope: Scope = None) -> None: ...
    async def stat(self, key: str, *, scope: Scope = None) -> Info: ...
    async def update(self, info: Info, fieldpaths: Sequence[str] = (),
                     *, scope: Scope = None) -> Info: ...
    async def list(self, filters: Sequence[str] = (), *, scope: Scope = None) -> list[Info]: ...
    async def usage(self, key: str, *, scope: Scope = None) -> Usage: ...
    async def cleanup(self) -> None: ...


@runtime_checkable
class Scopable(Protocol):
    """A ``Snapshots`` shared by several clients: ``scoped(name)`` is one client's."""

    def scoped(self, scope: str) -> Snapshots: ...


def for_client(snapshots: Snapshots, scope: str) -> Snapshots:
    """What the client ``scope`` may use of ``snapshots`` (all of it, if not shared)."""
    return snapshots.scoped(scope) if isinstance(snapshots, Scopable) else snapshots


class ScopedSnapshots:
    """The ``Snapshots`` one client (``scope``) gets of a shared snapshotter."""

    def __init__(self, snapshotter: ScopeAware, scope: str) -> None:
        self._sn = snapshotter
        self.scope = scope

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        return await self._sn.prepare(key, parent, labels, scope=self.scope)

    async def view(self, key: str, parent: str = "",
                   labels: Mapping[str, str] | None = None) -> list[Mount]:
        return await self._sn.view(key, parent, labels, scope=self.scope)

    async def mounts(self, key: str) -> list[Mount]:
        return await self._sn.mounts(key, scope=self.scope)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        await self._sn.commit(name, key, labels, scope=self.scope)

    async def remove(self, key: str) -> None:
        await self._sn.remove(key, scope=self.scope)

    async def stat(self, key: str) -> Info:
        return await self._sn.stat(key, scope=self.scope)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return await self._sn.update(info, fieldpaths, scope=self.scope)

    async def list(self, filters: Sequence[str] = ()) -> list[Info]:
        return await self._sn.list(filters, scope=self.scope)

    async def usage(self, key: str) -> Usage:
        return await self._sn.usage(key, scope=self.scope)

    async def cleanup(self) -> None:
        await self._sn.cleanup()


__all__ = ["CLIENT_SCOPE", "Scopable", "Scope", "ScopeAware", "ScopedSnapshots",
           "created_scopes", "for_client", "get", "hold", "hold_parent", "listed", "release",
           "visible"]
