"""The snapshotter's metadata: the only module that reads or writes the ``snapshots``
database of ``<root>/metadata.lmdb`` (the root's one environment, content.metadata).

Like containerd's ``snapshots/storage``: snapshot records by key, monotonically allocated ids,
and a parent→children index, all changed inside one transaction per operation. Filesystem
work (mkdir, rename) is the snapshotter's business, bracketed around these transactions.
The environment is shared with the other stores, so a transaction body may also write
another store's records in the same transaction: ``tx.txn`` is the environment's transaction,
to pass on (e.g. ``LayerDB.put(..., txn=tx.txn)``).

Key schema, version 1, in the named database ``snapshots`` (keys are UTF-8)::

    metadata.lmdb
    └── db "snapshots"
        ├── v1/schema                      -> {"version": 1}
        ├── v1/next-id                     -> {"id": <last id allocated>}
        ├── v1/snap/<key>                  -> {"id": 7, "kind": 2, "parent": "<parent key>",
        │                                      "labels": {...}, "created": <ns>, "updated": <ns>,
        │                                      "size": 0, "inodes": 0, "lower": "<dir>"|null,
        │                                      "scopes": ["<client name>", ...]}
        └── v1/children/<parent id:016x>/<child key> -> {}

Values are JSON, never pickle. Timestamps are integer nanoseconds since the epoch so that a
record reads back bit-identical. ``lower`` is set only for snapshots whose content lives
outside ``snapshots/<id>/fs`` (lazy layers). Renaming on commit keeps the id; children are
indexed by parent id, so a rename never touches the index (an active snapshot has no
children). LMDB keys are at most 511 bytes, so snapshot keys longer than ``MAX_KEY_BYTES`` are
refused with InvalidArgument.

``scopes`` names the clients that hold a snapshot (the ``snapshotter`` field of their
requests: containerd sends its proxy plugin's name, snapfs's own commands
``snapfs.snapshot.scoped.CLIENT_SCOPE``); the rules are ``snapfs.snapshot.scoped``'s. A record
without the field (written before it existed) is held by every client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NewType, TypeVar

from content.labels import validate_labels
from content.metadata import SNAPSHOTS_DB, MetadataDB, Txn
from content.metadata_store import ensure_schema, open_owning
from snapfs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from snapfs.snapshot.types import Info, Kind

SnapshotId = NewType("SnapshotId", int)
T = TypeVar("T")

SCHEMA_VERSION = 1
DB_NAME = SNAPSHOTS_DB
MAX_KEY_BYTES = 400  # leaves room for the "v1/children/<id>/" prefix under LMDB's 511
_SCHEMA = b"v1/schema"
_SCHEMA_RECORD = json.dumps({"version": SCHEMA_VERSION}).encode()
_NEXT_ID = b"v1/next-id"
_SNAP = "v1/snap/"
_CHILDREN = "v1/children/"


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    key: str
    id: SnapshotId
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0
    size: int = 0
    inodes: int = 0
    lower: str | None = None
    scopes: frozenset[str] = frozenset()

    def info(self) -> Info:
        return Info(
            name=self.key,
            parent=self.parent,
            kind=self.kind,
            labels=dict(self.labels),
            created_at=self.created_ns / 1e9,
            updated_at=self.updated_ns / 1e9,
        )


def _clean_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    # containerd's boltutil drops empty values: an empty value means "no such label".
    out = {k: v for k, v in (labels or {}).items() if v != ""}
    validate_labels(out)
    return out


def _snap_key(key: str) -> bytes:
    raw = key.encode()
    if not key:
        raise InvalidArgument("snapshot key must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidArgument(f"snapshot {key[:64]!r}…: key longer than {MAX_KEY_BYTES} bytes")
    return _SNAP.encode() + raw


def _child_key(parent_id: SnapshotId, child: str) -> bytes:
    return f"{_CHILDREN}{parent_id:016x}/{child}".encode()


def _encode(rec: SnapshotRecord) -> bytes:
    return json.dumps(
        {
            "id": rec.id,
            "kind": int(rec.kind),
            "parent": rec.parent,
            "labels": dict(rec.labels),
            "created": rec.created_ns,
            "updated": rec.updated_ns,
            "size": rec.size,
            "inodes": rec.inodes,
            "lower": rec.lower,
            "scopes": sorted(rec.scopes),
        },
        sort_keys=True,
    ).encode()


def _decode(key: str, raw: bytes) -> SnapshotRecord:
    d: dict[str, Any] = json.loads(raw)
    return SnapshotRecord(
        key=key,
        id=SnapshotId(int(d["id"])),
        kind=Kind(int(d["kind"])),
        parent=str(d.get("parent", "")),
        labels={str(k): str(v) for k, v in d.get("labels", {}).items()},
        created_ns=int(d.get("created", 0)),
        updated_ns=int(d.get("updated", 0)),
        size=int(d.get("size", 0)),
        inodes=int(d.get("inodes", 0)),
        lower=d.get("lower"),
        scopes=frozenset(str(s) for s in d.get("scopes", ())),
    )


class Transaction:
    """Operations on snapshot records inside one transaction (plain, synchronous)."""

    def __init__(self, txn: Txn) -> None:
        self.txn = txn  # the environment's transaction: pass it on to join other stores

    def find(self, key: str) -> SnapshotRecord | None:
        raw = self.txn.get(DB_NAME, _snap_key(key))
        return None if raw is None else _decode(key, raw)

    def get(self, key: str) -> SnapshotRecord:
        rec = self.find(key)
        if rec is None:
            raise NotFound(f"snapshot {key} not found")
        return rec

    def parents(self, rec: SnapshotRecord) -> list[SnapshotRecord]:
        """The ancestors of ``rec``, direct parent first."""
        chain: list[SnapshotRecord] = []
        parent = rec.parent
        while parent:
            p = self.get(parent)
            chain.append(p)
            parent = p.parent
        return chain

    def walk(self) -> Iterator[SnapshotRecord]:
        prefix = _SNAP.encode()
        for k, v in self.txn.scan(DB_NAME, prefix):
            yield _decode(k[len(prefix) :].decode(), v)

    def has_children(self, rec: SnapshotRecord) -> bool:
        return self.txn.has_prefix(DB_NAME, f"{_CHILDREN}{rec.id:016x}/".encode())

    def create(
        self,
        key: str,
        kind: Kind,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        *,
        lower: str | None = None,
        scopes: frozenset[str] = frozenset(),
    ) -> SnapshotRecord:
        """A new active, view (or, for lazy layers, committed) snapshot with a fresh id."""
        if kind not in (Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED):
            raise InvalidArgument(f"snapshot {key}: cannot create a snapshot of kind {kind.name}")
        clean = _clean_labels(labels)
        if self.find(key) is not None:
            raise AlreadyExists(f"snapshot {key} already exists")
        parent_rec = None
        if parent:
            parent_rec = self.find(parent)
            if parent_rec is None:
                raise NotFound(f"snapshot {key}: parent snapshot {parent} not found")
            if parent_rec.kind != Kind.COMMITTED:
                raise FailedPrecondition(
                    f"snapshot {key}: parent {parent} is {parent_rec.kind.name.lower()}, "
                    "not committed"
                )
        now = time.time_ns()
        rec = SnapshotRecord(
            key=key,
            id=self._allocate_id(),
            kind=kind,
            parent=parent,
            labels=clean,
            created_ns=now,
            updated_ns=now,
            lower=lower,
            scopes=scopes,
        )
        self._put(rec)
        if parent_rec is not None:
            self.txn.put(DB_NAME, _child_key(parent_rec.id, key), b"{}")
        return rec

    def commit_active(
        self,
        key: str,
        name: str,
        labels: Mapping[str, str] | None,
        size: int,
        inodes: int,
    ) -> SnapshotRecord:
        """Turn active ``key`` into committed ``name``, keeping its id and parent."""
        clean = _clean_labels(labels)
        rec = self.get(key)
        if rec.kind != Kind.ACTIVE:
            raise FailedPrecondition(
                f"snapshot {key} is {rec.kind.name.lower()}, not active: cannot commit"
            )
        if self.find(name) is not None:
            raise AlreadyExists(f"snapshot {name} already exists")
        now = time.time_ns()
        committed = replace(
            rec,
            key=name,
            kind=Kind.COMMITTED,
            labels=clean,
            created_ns=now,
            updated_ns=now,
            size=size,
            inodes=inodes,
        )
        self.txn.delete(DB_NAME, _snap_key(key))
        self._put(committed)
        if rec.parent:
            parent = self.get(rec.parent)
            self.txn.delete(DB_NAME, _child_key(parent.id, key))
            self.txn.put(DB_NAME, _child_key(parent.id, name), b"{}")
        return committed

    def remove(self, key: str) -> SnapshotRecord:
        rec = self.get(key)
        if self.has_children(rec):
            raise FailedPrecondition(f"cannot remove snapshot {key}: it has children")
        self.txn.delete(DB_NAME, _snap_key(key))
        if rec.parent:
            parent = self.find(rec.parent)
            if parent is not None:
                self.txn.delete(DB_NAME, _child_key(parent.id, key))
        return rec

    def update_labels(
        self, key: str, labels: Mapping[str, str], fieldpaths: tuple[str, ...]
    ) -> SnapshotRecord:
        """containerd's UpdateInfo: only labels are mutable; empty fieldpaths = all labels."""
        rec = self.get(key)
        new = dict(rec.labels)
        if not fieldpaths:
            new = dict(labels)
        for path in fieldpaths:
            if path.startswith("labels."):
                k = path[len("labels.") :]
                new[k] = labels.get(k, "")
            elif path == "labels":
                new = dict(labels)
            else:
                raise InvalidArgument(f"cannot update {path!r} field on snapshot {key}")
        updated = replace(rec, labels=_clean_labels(new), updated_ns=time.time_ns())
        self._put(updated)
        return updated

    def set_scopes(self, rec: SnapshotRecord, scopes: frozenset[str]) -> SnapshotRecord:
        """``rec`` held by ``scopes`` from now on (no timestamp changes: not a user edit)."""
        updated = replace(rec, scopes=scopes)
        self._put(updated)
        return updated

    def children(self, rec: SnapshotRecord) -> list[SnapshotRecord]:
        prefix = f"{_CHILDREN}{rec.id:016x}/".encode()
        keys = [k[len(prefix):].decode() for k, _ in self.txn.scan(DB_NAME, prefix)]
        return [self.get(k) for k in keys]

    def ids(self) -> set[SnapshotId]:
        return {rec.id for rec in self.walk()}

    def _put(self, rec: SnapshotRecord) -> None:
        self.txn.put(DB_NAME, _snap_key(rec.key), _encode(rec))

    def _allocate_id(self) -> SnapshotId:
        raw = self.txn.get(DB_NAME, _NEXT_ID)
        last = 0 if raw is None else int(json.loads(raw)["id"])
        self.txn.put(DB_NAME, _NEXT_ID, json.dumps({"id": last + 1}).encode())
        return SnapshotId(last + 1)


class MetaStore:
    """The snapshot records in ``metadata``; use ``with_transaction`` for every read and
    write. ``MetaStore.open(root)`` opens its own handle on ``<root>/metadata.lmdb``, closed
    with the store; a handle passed to the constructor stays open."""

    def __init__(self, metadata: MetadataDB) -> None:
        self._md: MetadataDB | None = metadata
        self._owns = False
        self.path = metadata.path

        ensure_schema(metadata, DB_NAME, _SCHEMA, _SCHEMA_RECORD, lambda found: (
            FailedPrecondition(f"metadata {self.path}: schema version {found!r} is not "
                               f"{SCHEMA_VERSION}")))

    @classmethod
    def open(cls, root: Path) -> MetaStore:
        return open_owning(cls, root)

    @property
    def metadata(self) -> MetadataDB:
        """The environment's handle, for a transaction that also spans other stores."""
        if self._md is None:
            raise FailedPrecondition(f"metadata {self.path} is closed")
        return self._md

    @property
    def closed(self) -> bool:
        return self._md is None

    def with_transaction(self, write: bool, fn: Callable[[Transaction], T], *,
                         txn: Txn | None = None) -> T:
        """Run ``fn`` in one transaction; commit if it returns, abort if it raises. With
        ``txn`` (another store's transaction on the same environment), inside that one."""
        return self.metadata.with_transaction(write, lambda t: fn(Transaction(t)), txn=txn)

    def close(self) -> None:
        if self._md is not None:
            if self._owns:
                self._md.close()
            self._md = None
