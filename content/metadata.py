"""The one LMDB environment of a snapfs root, ``<root>/metadata.lmdb``: the only module that
opens LMDB.

Each store keeps its own module, record types and value encodings, takes a
:class:`MetadataDB` through its constructor and works in its own named database. Sharing one
environment is what lets one write transaction span stores: a snapshot record and the
lazy-layer record behind it commit together or not at all (a ``MetaStore`` transaction body
passes ``tx.txn`` on to ``LayerDB``'s methods as ``txn=``).

Key schema, version 1. Keys are bytes (UTF-8); values are JSON unless marked raw, never
pickle::

    <root>/metadata.lmdb/               data.mdb, lock.mdb, migration.lock (flock)
    ├── db "schema"                     this module
    │   ├── version                     -> {"version": 1}
    │   └── migrated/<old path>         -> {"records": <n>, "aside": "<name>", "at": <ns>}
    ├── db "content"                    content.index: one row per verified blob
    │   ├── content/version             -> raw b"1"
    │   └── content/v1/blob/<alg>:<hex> -> {"size", "mediatype", "labels", "created", "updated"}
    ├── db "images"                     snapfs.app.images: the image table
    │   └── v1/image/<name>             -> {"name", "target", "config", "chain_ids", "lazy",
    │                                       "created", "updated"}
    ├── db "snapshots"                  snapfs.snapshot.metastore
    │   ├── v1/schema                   -> {"version": 1}
    │   ├── v1/next-id                  -> {"id": <last id allocated>}
    │   ├── v1/snap/<key>               -> {"id", "kind", "parent", "labels", "created", …}
    │   └── v1/children/<parent id:016x>/<child key> -> {}
    └── db "layers"                     snapfs.lazy.layerdb: lazy layers
        ├── v1/schema                   -> {"version": 1}
        ├── v1/layer/<blob digest>      -> {"ref", "size", "format", "toc_digest", "created"}
        ├── v1/range/<blob digest>/<offset:016x> -> raw bytes of the blob at that offset
        └── v1/local/<blob digest>      -> {"dir", "bytes", "created"}

There is no chunk index yet: verified chunks are files named by digest under
``<root>/chunks/sha256/`` (content.chunkcache), found by name. ``schema/version`` numbers
this map (which databases exist, what each holds); each database's keys carry their own
version, checked by their store. A root of a newer version is refused.

Transactions: ``with_transaction(write, fn)`` runs the plain function ``fn`` in one
transaction, committed if it returns, aborted if it raises; nothing may await while a write
transaction is open. ``txn=`` runs ``fn`` inside a transaction already open instead, which is
how stores join each other's. LMDB allows one writer at a time: a second write transaction
opened in a thread that holds one would deadlock, so it is refused instead. Several processes
(the daemon, CLI commands) may open one root: LMDB serialises their writers.

Migration from the previous layout (``meta.lmdb`` snapshots, ``layers.lmdb``,
``images.lmdb``, ``content/meta.lmdb``, four environments): the first open copies every
record into its database here in one write transaction, then renames the old environments
aside (``meta.lmdb.migrated-v1``…), all under an flock on ``migration.lock``, so two
processes opening an old root take turns and the second finds nothing left to do. A crash
before the commit leaves the old environments as they were; one after it leaves some to be
copied again, which rewrites identical values. An old environment that another process has
open (an older daemon), or whose records disagree with what is already here, is refused
with a message saying what to do. The file work is content.legacy_metadata's.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from content.errors import FailedPrecondition, InvalidArgument, Unavailable
from content.legacy_metadata import Legacy, copy_records

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
ENV_NAME = "metadata.lmdb"
SCHEMA_DB = b"schema"
CONTENT_DB = b"content"
IMAGES_DB = b"images"
SNAPSHOTS_DB = b"snapshots"
LAYERS_DB = b"layers"
DATABASES = (SCHEMA_DB, CONTENT_DB, IMAGES_DB, SNAPSHOTS_DB, LAYERS_DB)
MAP_SIZE = 1 << 34  # address space, not disk: the old four maps together came to 14 GiB
_MAX_DBS = 16
_VERSION = b"version"
_MIGRATED = b"migrated/"


class Txn:
    """One transaction on the metadata environment, valid only inside the body it was given
    to: pass it on (``txn=``) so that other stores join it; never keep it."""

    __slots__ = ("_env", "_raw", "write")

    def __init__(self, env: _Env, raw: lmdb.Transaction, write: bool) -> None:
        self._env = env
        self._raw: lmdb.Transaction | None = raw
        self.write = write

    def get(self, db: bytes, key: bytes) -> bytes | None:
        value = self._txn().get(key, db=self._db(db))
        return None if value is None else bytes(value)

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self._writable().put(key, value, db=self._db(db))

    def delete(self, db: bytes, key: bytes) -> bool:
        return bool(self._writable().delete(key, db=self._db(db)))

    def scan(self, db: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key starting with ``prefix``, in key order."""
        with self._txn().cursor(db=self._db(db)) as cursor:
            if not cursor.set_range(prefix):
                return
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    return
                yield bytes(key), bytes(value)

    def has_prefix(self, db: bytes, prefix: bytes) -> bool:
        return next(self.scan(db, prefix), None) is not None

    def _txn(self) -> lmdb.Transaction:
        if self._raw is None:
            raise FailedPrecondition(f"metadata {self._env.path}: transaction used after it "
                                     "ended")
        return self._raw

    def _writable(self) -> lmdb.Transaction:
        if not self.write:
            raise FailedPrecondition(f"metadata {self._env.path}: write in a read transaction")
        return self._txn()

    def _db(self, name: bytes) -> Any:
        try:
            return self._env.dbs[name]
        except KeyError:
            raise InvalidArgument(f"metadata {self._env.path}: no database {name!r}") from None


class _Env:
    """This process's one handle on one environment, shared by every MetadataDB on it: LMDB
    must not open an environment twice in one process (closing one breaks the other's locks)."""

    def __init__(self, path: Path, env: lmdb.Environment, dbs: dict[bytes, Any]) -> None:
        self.path = path
        self.env = env
        self.dbs = dbs
        self.refs = 0
        self._local = threading.local()

    @contextmanager
    def begin(self, write: bool) -> Iterator[Txn]:
        if write:
            if getattr(self._local, "writing", False):
                raise FailedPrecondition(
                    f"metadata {self.path}: a write transaction is already open in this "
                    "thread; pass it on (txn=) instead of opening another")
            self._local.writing = True
        try:
            with self.env.begin(write=write) as raw:
                txn = Txn(self, raw, write)
                try:
                    yield txn
                finally:
                    txn._raw = None
        finally:
            if write:
                self._local.writing = False


_shared: dict[str, _Env] = {}
_shared_lock = threading.Lock()


def _open_environment(path: Path, *, subdir: bool = True, readonly: bool = False
                      ) -> lmdb.Environment:
    """The one place LMDB is opened: metadata.lmdb, or (read-only, unlocked) an old one."""
    try:
        return lmdb.open(str(path), subdir=subdir, readonly=readonly, lock=not readonly,
                         create=not readonly, map_size=MAP_SIZE, max_dbs=_MAX_DBS)
    except lmdb.Error as exc:
        raise Unavailable(f"metadata {path}: cannot open: {exc}") from exc


def _acquire(path: Path) -> _Env:
    key = os.path.realpath(path)
    with _shared_lock:
        shared = _shared.get(key)
        if shared is None:
            env = _open_environment(path)
            try:
                env.reader_check()  # reader slots left by killed processes
                with env.begin(write=True) as txn:
                    dbs = {name: env.open_db(name, txn=txn) for name in DATABASES}
            except BaseException:
                env.close()
                raise
            shared = _shared[key] = _Env(path, env, dbs)
        shared.refs += 1
        return shared


def _release(shared: _Env) -> None:
    with _shared_lock:
        shared.refs -= 1
        if shared.refs == 0:
            del _shared[os.path.realpath(shared.path)]
            shared.env.close()


def _call(fn: Callable[[Txn], T], txn: Txn) -> T:
    result = fn(txn)
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError("a metadata transaction body must be a plain def: nothing may await "
                        "while a transaction is open")
    return result


class MetadataDB:
    """A handle on ``<root>/metadata.lmdb``; open with :meth:`open`, which migrates the
    previous layout. Handles on one root in one process share one environment; ``close()``
    is idempotent and the last one closes the environment."""

    def __init__(self, root: Path, shared: _Env, migrated: tuple[str, ...] = ()) -> None:
        self.root = root
        self.path = shared.path
        self.migrated = migrated  # the old environments this open moved in
        self._shared: _Env | None = shared

    @classmethod
    def open(cls, root: Path) -> MetadataDB:
        """Blocking (it may wait for another process's migration): from async code, call it
        through ``trio.to_thread.run_sync``."""
        root = Path(root)
        if root.suffix == ".lmdb":
            raise InvalidArgument(f"metadata: {root} is an LMDB environment's name; open the "
                                  f"root that holds {ENV_NAME}")
        path = root / ENV_NAME
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not any(old.present(root) for old in _LEGACY):
            return cls._attach(root, path, [])
        with _flock(path / "migration.lock"):
            return cls._attach(root, path, [old for old in _LEGACY if old.present(root)])

    @classmethod
    def _attach(cls, root: Path, path: Path, legacy: list[Legacy]) -> MetadataDB:
        shared = _acquire(path)
        moved: list[tuple[Legacy, str]] = []
        try:
            with shared.begin(False) as txn:
                ready = _check_version(txn) and not legacy
            if not ready:
                with shared.begin(True) as txn:
                    moved = _migrate(txn, root, legacy)
                for old, aside in moved:
                    old.set_aside(root, aside)
        except BaseException:
            _release(shared)
            raise
        for old, aside in moved:
            log.info("metadata %s: migrated %s (now %s)", path, old.rel, aside)
        return cls(root, shared, tuple(old.rel for old, _ in moved))

    @property
    def closed(self) -> bool:
        return self._shared is None

    def with_transaction(self, write: bool, fn: Callable[[Txn], T], *,
                         txn: Txn | None = None) -> T:
        """Run ``fn`` in one transaction: commit if it returns, abort if it raises. With
        ``txn``, run it inside that one instead (it must be this environment's, and a write
        transaction if ``write``); its opener commits or aborts."""
        shared = self._live()
        if txn is None:
            with shared.begin(write) as new:
                return _call(fn, new)
        if txn._env is not shared:
            raise InvalidArgument(f"metadata {self.path}: transaction of another environment "
                                  f"({txn._env.path})")
        if write and not txn.write:
            raise FailedPrecondition(f"metadata {self.path}: needs a write transaction, got a "
                                     "read transaction")
        txn._txn()
        return _call(fn, txn)

    def read(self, fn: Callable[[Txn], T], *, txn: Txn | None = None) -> T:
        return self.with_transaction(False, fn, txn=txn)

    def write(self, fn: Callable[[Txn], T], *, txn: Txn | None = None) -> T:
        return self.with_transaction(True, fn, txn=txn)

    def close(self) -> None:
        if self._shared is not None:
            shared, self._shared = self._shared, None
            _release(shared)

    def __enter__(self) -> MetadataDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> _Env:
        if self._shared is None:
            raise FailedPrecondition(f"metadata {self.path} is closed")
        return self._shared


def _check_version(txn: Txn) -> bool:
    """Whether the schema record is there; refuses a version this code does not read."""
    raw = txn.get(SCHEMA_DB, _VERSION)
    if raw is None:
        return False
    try:
        version = json.loads(raw)["version"]
    except (ValueError, KeyError, TypeError):
        version = raw.decode(errors="replace")
    if version != SCHEMA_VERSION:
        raise FailedPrecondition(f"metadata {txn._env.path}: schema version {version!r} is "
                                 f"not {SCHEMA_VERSION}, the one this snapfs reads; run the "
                                 "snapfs that wrote it")
    return True


# -- the previous layout (content.legacy_metadata) ----------------------------------------


_LEGACY = (
    Legacy("meta.lmdb", True, SNAPSHOTS_DB, SNAPSHOTS_DB),
    Legacy("layers.lmdb", True, LAYERS_DB, LAYERS_DB),
    Legacy("images.lmdb", True, None, IMAGES_DB),
    Legacy("content/meta.lmdb", False, None, CONTENT_DB),
    Legacy("meta.lmdb", False, None, CONTENT_DB),  # a content store that was its own root
)


def _migrate(txn: Txn, root: Path, legacy: list[Legacy]) -> list[tuple[Legacy, str]]:
    """Write the schema record and copy every old environment's records; return where each
    old environment is to be renamed once this transaction has committed."""
    if not _check_version(txn):
        txn.put(SCHEMA_DB, _VERSION, json.dumps({"version": SCHEMA_VERSION}).encode())
    for old in legacy:
        if old.held_elsewhere(root):
            raise FailedPrecondition(
                f"metadata {root}: {old.rel} (the previous layout) is open in another process "
                "(an older snapfs daemon?); stop it, then open the root again to migrate it")
    moved = []
    for old in legacy:
        count = _copy(txn, root, old)
        aside = old.aside_name(root)
        record = {"records": count, "aside": aside, "at": time.time_ns()}
        txn.put(SCHEMA_DB, _MIGRATED + old.rel.encode(), json.dumps(record).encode())
        moved.append((old, aside))
    return moved


def _copy(txn: Txn, root: Path, old: Legacy) -> int:
    env = _open_environment(root / old.rel, subdir=old.subdir, readonly=True)
    try:
        return copy_records(env, old, root, partial(txn.get, old.into),
                            partial(txn.put, old.into))
    finally:
        env.close()


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = ["CONTENT_DB", "DATABASES", "IMAGES_DB", "LAYERS_DB", "SCHEMA_VERSION",
           "SNAPSHOTS_DB", "MetadataDB", "Txn"]
