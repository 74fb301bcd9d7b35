"""The native snapshotter: containerd's overlayfs snapshotter semantics over snapfs's metastore.

Layout::

    <root>/metadata.lmdb              snapshot records, in the "snapshots" database of the
                                      root's one LMDB environment (snapfs.snapshot.metastore;
                                      content.metadata draws every database)
    <root>/snapshots/<id>/fs          the snapshot's upper (or only) directory
    <root>/snapshots/<id>/work        overlay workdir, active snapshots only
    <root>/snapshots/new-<pid>-*      being created; renamed to <id> inside the transaction
    <root>/snapshots/rm-*             removed in a committed transaction, being deleted

Filesystem changes bracket each transaction (containerd's order): a new snapshot is built in a
``new-*`` dir and renamed into place before its transaction commits, so a failure leaves no
half-made ``<id>``; a removed snapshot's dir is renamed to ``rm-*`` inside the transaction and
deleted only after the commit. What a crash leaves behind is swept at the next open (rm-*,
new-* of dead pids: ``placing.sweep_leftovers``); ``cleanup`` collects anything else.
Every transaction goes through ``_tx`` (the metastore's ``with_transaction``); its body gets
a metastore ``Transaction`` whose ``txn`` can be passed on, so lazy-layer records
(snapfs.lazy.layerdb, same environment) commit in the same transaction as their snapshot.

Lazy layers plug in through ``RemoteLayers`` (``snapfs.snapshot.remote``): a Prepare carrying
``containerd.io/snapshot.ref`` asks it first; if it offers a layer, the layer is committed under
the ref name, its record written in the same transaction, and the call answers AlreadyExists
(containerd's remote-snapshot handshake; a concurrent Prepare's commit is held instead, and the
remote's own AlreadyExists answers Unavailable). Without one: containerd's overlayfs snapshotter.
A managed remote is asked, whenever mounts are computed, where a committed remote snapshot's
files are now (``lowerdir``), and is told when the last snapshot on a remote layer is removed
(containerd's GC is the only one who knows). An optional ``PrepareObserver`` hears of remote
layers committed and of active snapshots about to be made on them (startup profiles).

Each method takes the client it serves (``scope``; ``snapfs.snapshot.scoped`` holds the rules
by which clients sharing a root never see or remove each other's snapshots); ``scoped(name)``
is the ``Snapshots`` of one client.

Must not know of FUSE, HTTP or registries: lazy layers are a ``RemoteLayers``.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn, TypeVar, cast

import trio

from content.metadata import MetadataDB
from snapfs.errors import AlreadyExists, FailedPrecondition, Unavailable
from snapfs.snapshot import scoped
from snapfs.snapshot.labels import LABEL_SNAPSHOT_REF
from snapfs.snapshot.metastore import MetaStore, SnapshotRecord, Transaction
from snapfs.snapshot.mounts import OverlayFeatures, detect_overlay_features, snapshot_mounts
from snapfs.snapshot.placing import in_flight, into_place, sweep_leftovers, temp_prefix
from snapfs.snapshot.remote import (
    ManagedRemoteLayers,
    PrepareObserver,
    RemoteLayers,
    collecting,
    is_managed,
    remote_parents,
)
from snapfs.snapshot.scoped import Scope, ScopedSnapshots
from snapfs.snapshot.types import Info, Kind, Mount, Usage
from snapfs.snapshot.usage import disk_usage

log = logging.getLogger(__name__)

T = TypeVar("T")


class Snapshotter:
    """containerd's ``Snapshotter`` over ``<root>``. Open with ``Snapshotter.open(root)`` or
    ``async with open_snapshotter(root) as sn`` (``metadata=``: the root's handle, shared with
    the other stores; by default one of its own); ``close()`` is idempotent."""

    def __init__(self, root: Path, store: MetaStore, *, remote: RemoteLayers | None = None,
                 features: OverlayFeatures | None = None,
                 observer: PrepareObserver | None = None) -> None:
        self.root = root
        self._store = store
        self._remote = remote
        self._observer = observer
        self._managed = cast(ManagedRemoteLayers, remote) if is_managed(remote) else None
        self._gc = collecting(remote) if self._managed is not None else None
        self._features = features if features is not None else detect_overlay_features()
        self._snapshots = root / "snapshots"
        self._removals = trio.CapacityLimiter(2)  # big rmtrees must not starve other threads

    @classmethod
    def open(cls, root: Path, *, remote: RemoteLayers | None = None,
             features: OverlayFeatures | None = None, metadata: MetadataDB | None = None,
             observer: PrepareObserver | None = None) -> Snapshotter:
        root = Path(root).absolute()
        (root / "snapshots").mkdir(parents=True, exist_ok=True)
        os.chmod(root / "snapshots", 0o700)
        store = MetaStore(metadata) if metadata is not None else MetaStore.open(root)
        return cls(root, store, remote=remote, features=features, observer=observer)

    def close(self) -> None:
        self._store.close()

    async def aclose(self) -> None:
        self.close()

    def scoped(self, scope: str) -> ScopedSnapshots:
        """The ``Snapshots`` of the client ``scope`` (a request's ``snapshotter`` field)."""
        return ScopedSnapshots(self, scope)

    # -- paths and mounts -------------------------------------------------------------------

    def snapshot_dir(self, rec: SnapshotRecord) -> Path:
        return self._snapshots / str(rec.id)

    def content_dir(self, rec: SnapshotRecord) -> Path:
        """Where a snapshot's files live: its ``fs`` dir, or a remote layer's directory (as
        the remote places it now)."""
        if not rec.lower:
            return self.snapshot_dir(rec) / "fs"
        return Path(self._managed.lowerdir(rec.lower) if self._managed else rec.lower)

    @property
    def remote(self) -> RemoteLayers | None:
        """The lazy-layer seam this snapshotter was opened with (``snapfs status`` reads it)."""
        return self._remote

    def _mounts(self, tx: Transaction, rec: SnapshotRecord) -> list[Mount]:
        lowers = [self.content_dir(p) for p in tx.parents(rec)]
        return snapshot_mounts(rec.kind, self.snapshot_dir(rec), lowers, self._features)

    @property
    def metadata(self) -> MetadataDB:
        """The root's metadata handle: what the lazy layers' records must share to commit in
        this snapshotter's transactions."""
        return self._store.metadata

    def _tx(self, write: bool, fn: Callable[[Transaction], T]) -> T:
        """One transaction (the metastore's ``with_transaction``): ``fn`` is a plain def;
        ``tx.txn`` joins other stores of this root (lazy-layer records) to it."""
        if self._store.closed:
            raise Unavailable(f"snapshotter {self.root} is closed")
        return self._store.with_transaction(write, fn)

    # -- the Snapshots protocol -------------------------------------------------------------

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None,
                      *, scope: Scope = None) -> list[Mount]:
        labels = dict(labels or {})
        if self._remote is not None and labels.get(LABEL_SNAPSHOT_REF):
            await self._try_remote(key, parent, labels, scope)
        elif self._observer is not None and parent:
            lazy_parents = self._tx(False, lambda tx: remote_parents(tx, parent))
            if lazy_parents:
                await self._observer.before_active(key, lazy_parents)
        return self._create(Kind.ACTIVE, key, parent, labels,
                            await self._root_owner(parent, scope), scope)

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None,
                   *, scope: Scope = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, dict(labels or {}),
                            await self._root_owner(parent, scope), scope)

    async def mounts(self, key: str, *, scope: Scope = None) -> list[Mount]:
        return self._tx(False, lambda tx: self._mounts(tx, scoped.get(tx, key, scope)))

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None,
                     *, scope: Scope = None) -> None:
        rec = self._tx(False, lambda tx: scoped.get(tx, key, scope))
        # The walk happens outside the transaction (it may be long); the commit below checks
        # again that the snapshot is still the same active one.
        usage = await trio.to_thread.run_sync(disk_usage, self.snapshot_dir(rec) / "fs")

        def body(tx: Transaction) -> bool:
            current = scoped.get(tx, key, scope)
            if current.id != rec.id:
                raise FailedPrecondition(f"snapshot {key} changed while committing")
            if tx.find(name) is not None:
                # Another client's (or a concurrent pull's) commit won: this client holds
                # that one now, as it would hold its own.
                scoped.hold(tx, name, scope)
                return False
            tx.commit_active(key, name, labels, usage.size, usage.inodes)
            return True

        if not self._tx(True, body):
            raise AlreadyExists(f"snapshot {name} already exists")
        log.info("committed snapshot %s as %s (id %d)", key, name, rec.id)

    async def remove(self, key: str, *, scope: Scope = None) -> None:
        def body(tx: Transaction) -> tuple[Path, str | None] | None:
            if scoped.release(tx, key, scope):
                return None  # other clients hold it still
            rec = tx.remove(key)
            path = self.snapshot_dir(rec)
            doomed = self._snapshots / f"rm-{rec.id}"
            # A missing dir means the record was all that was left.
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, doomed)
            # One remote layer may be committed under several chain ids (several images).
            last = rec.lower and not any(r.lower == rec.lower for r in tx.walk())
            if last and self._managed is not None:
                self._managed.forget_remote(tx, rec.lower or "")
            return doomed, rec.lower if last else None

        removed = self._tx(True, body)
        if removed is None:
            return
        doomed, released = removed
        await self._delete(doomed)
        if released and self._managed is not None:
            await self._managed.release_remote(released)

    async def stat(self, key: str, *, scope: Scope = None) -> Info:
        return self._tx(False, lambda tx: scoped.get(tx, key, scope).info())

    async def update(self, info: Info, fieldpaths: Sequence[str] = (),
                     *, scope: Scope = None) -> Info:
        paths = tuple(fieldpaths)

        def body(tx: Transaction) -> Info:
            scoped.get(tx, info.name, scope)
            return tx.update_labels(info.name, info.labels, paths).info()

        return self._tx(True, body)

    async def list(self, filters: Sequence[str] = (), *, scope: Scope = None) -> list[Info]:
        records = self._tx(False, lambda tx: list(tx.walk()))
        return [r.info() for r in scoped.listed(records, filters, scope)]

    async def usage(self, key: str, *, scope: Scope = None) -> Usage:
        rec = self._tx(False, lambda tx: scoped.get(tx, key, scope))
        if rec.kind == Kind.ACTIVE:
            return await trio.to_thread.run_sync(disk_usage, self.snapshot_dir(rec) / "fs")
        if rec.lower and self._gc is not None:
            # A lazy layer holds on disk what was fetched (kubelet's image GC counts this).
            local = self._gc.local_usage(rec.lower)
            if local is not None:
                return Usage(size=local.size, inodes=local.inodes or rec.inodes)
        return Usage(size=rec.size, inodes=rec.inodes)

    async def cleanup(self) -> None:
        """Delete directories under snapshots/ that no snapshot references; then the remote
        drops layers no snapshot uses and the disk they held (chunks, directories)."""

        def body(tx: Transaction) -> tuple[builtins.list[Path], builtins.list[str]]:
            # Listed inside the transaction: with no await between here and the commit, no
            # Prepare of this process can be mid-flight.
            ids = {str(i) for i in tx.ids()}
            # Another process's Prepare on this root can be mid-flight, though: its new-* stays.
            dirs = [p for p in self._snapshots.iterdir()
                    if p.name not in ids and not in_flight(p.name)]
            if self._gc is None:
                return dirs, []
            lowers = {r.lower for r in tx.walk() if r.lower}
            return dirs, self._gc.forget_unreferenced(tx, lowers)

        dirs, released = self._tx(self._gc is not None, body)
        for path in dirs:
            log.info("cleanup: removing unreferenced %s", path)
            await self._delete(path)
        if self._gc is not None and self._managed is not None:
            for lower in released:
                await self._managed.release_remote(lower)
            await self._gc.collect()

    # -- internals --------------------------------------------------------------------------

    async def _root_owner(self, parent: str, scope: Scope) -> tuple[int, int] | None:
        """The owner of ``parent``'s root directory, which a child keeps (as containerd does).

        In a worker thread: the parent may be a lazy layer on the FUSE mount this very trio
        loop serves, and a stat from the loop would wait for itself forever.
        """
        if not parent:
            return None
        rec = self._tx(False, lambda tx: tx.find(parent))
        if rec is None or not scoped.visible(rec, scope):
            return None  # the transaction reports the missing parent
        st = await trio.to_thread.run_sync(os.stat, self.content_dir(rec))
        return st.st_uid, st.st_gid

    def _create(self, kind: Kind, key: str, parent: str, labels: dict[str, str],
                owner: tuple[int, int] | None, scope: Scope) -> builtins.list[Mount]:
        # No await from here to the end: the temp dir, the record and the rename are one step
        # as far as other tasks (and cleanup) can see.
        temp = Path(tempfile.mkdtemp(prefix=temp_prefix(), dir=self._snapshots))
        try:
            fs = temp / "fs"
            fs.mkdir()
            os.chmod(fs, 0o755)  # explicit: the caller's umask must not shape the root dir
            if kind == Kind.ACTIVE:
                (temp / "work").mkdir()

            def body(tx: Transaction) -> builtins.list[Mount]:
                scoped.hold_parent(tx, key, parent, scope)
                rec = tx.create(key, kind, parent, labels, scopes=scoped.created_scopes(scope))
                if owner is not None:
                    os.chown(fs, *owner)
                into_place(temp, self.snapshot_dir(rec))
                return self._mounts(tx, rec)

            return self._tx(True, body)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    async def _try_remote(self, key: str, parent: str, labels: dict[str, str],
                          scope: Scope) -> None:
        """containerd's remote-snapshot handshake; returns only if the layer must be unpacked.
        AlreadyExists means exactly "``target`` is committed and this client holds it": the
        caller Stat()s it next (containerd's unpacker, snapfs's puller)."""
        assert self._remote is not None
        target = labels[LABEL_SNAPSHOT_REF]
        existing = self._tx(False, lambda tx: tx.find(target))
        if existing is not None:
            await self._reuse(existing, labels, scope)
        try:
            layer = await self._remote.prepare_remote(key, parent, labels)
        except AlreadyExists as exc:  # the remote's own (a layer it has): not the handshake's
            raise Unavailable(f"snapshot {key}: remote layer for {target}: {exc}") from exc
        if layer is None:
            return
        lower = layer.lower
        temp = Path(tempfile.mkdtemp(prefix=temp_prefix(), dir=self._snapshots))
        try:
            (temp / "fs").mkdir()

            def body(tx: Transaction) -> SnapshotRecord | None:
                scoped.hold_parent(tx, key, parent, scope)
                if (winner := tx.find(target)) is not None:
                    return winner  # a concurrent Prepare (another process) committed first
                rec = tx.create(target, Kind.COMMITTED, parent, labels, lower=lower,
                                scopes=scoped.created_scopes(scope))
                if layer.record is not None:
                    layer.record(tx)
                into_place(temp, self.snapshot_dir(rec))
                return None

            winner = self._tx(True, body)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            with trio.CancelScope(shield=True):
                await self._release_if_unused(lower)
            raise
        if winner is not None:
            shutil.rmtree(temp, ignore_errors=True)
            await self._release_if_unused(lower)
            await self._reuse(winner, labels, scope)  # as if it had been there first
        log.info("snapshot %s: remote layer at %s committed as %s", key, lower, target)
        if self._observer is not None:
            await self._observer.remote_prepared(lower, labels)
        raise AlreadyExists(f"snapshot {target} already exists (remote layer)")

    async def _reuse(self, existing: SnapshotRecord, labels: dict[str, str],
                     scope: Scope) -> NoReturn:
        """A Prepare for the committed ``existing``: this client holds it, AlreadyExists."""
        if existing.lower and self._managed is not None:
            # A chain ID is only a claim about content: a lazy snapshot stands for another
            # layer blob only once its own content was verified (the remote decides).
            await self._managed.check_reuse(existing.lower, labels)
        # containerd lists it next (filtered on snapshot.ref): it must be this client's.
        self._tx(True, lambda tx: scoped.hold(tx, existing.key, scope))
        if existing.lower and self._observer is not None:
            await self._observer.remote_prepared(existing.lower, labels)
        raise AlreadyExists(f"snapshot {existing.key} already exists")

    async def _release_if_unused(self, lower: str) -> None:
        """After a failed commit of a remote layer: let the remote drop it unless another
        snapshot (another chain id) already uses the same layer."""
        if self._managed is None or self._store.closed:
            return
        if not self._tx(False, lambda tx: any(r.lower == lower for r in tx.walk())):
            await self._managed.release_remote(lower)

    async def _delete(self, path: Path) -> None:
        await trio.to_thread.run_sync(
            lambda: shutil.rmtree(path, ignore_errors=True), limiter=self._removals
        )


@asynccontextmanager
async def open_snapshotter(
    root: Path, *, remote: RemoteLayers | None = None, metadata: MetadataDB | None = None,
    observer: PrepareObserver | None = None,
) -> AsyncIterator[Snapshotter]:
    sn = Snapshotter.open(root, remote=remote, metadata=metadata, observer=observer)
    try:
        await trio.to_thread.run_sync(sweep_leftovers, root / "snapshots")
        yield sn
    finally:
        sn.close()


__all__ = ["Snapshotter", "open_snapshotter"]
