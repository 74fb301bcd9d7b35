"""Records of lazy layers in LMDB: the only module that touches ``<root>/layers.lmdb``.

A separate environment from the snapshotter's ``meta.lmdb``: the snapshot records say which
directory a committed lazy snapshot uses; this one says how to bring that directory back
(which blob of which image, and the bytes its index was read from) without the network.

Key schema, version 1, in the named database ``layers`` (keys are UTF-8)::

    layers.lmdb
    └── db "layers"
        ├── v1/schema                           -> {"version": 1}
        ├── v1/layer/<blob digest>              -> {"ref": "<image ref>", "size": <blob size>,
        │                                           "format": "estargz"|"zstd:chunked",
        │                                           "toc_digest": "<digest>", "created": <ns>}
        ├── v1/range/<blob digest>/<offset:016x> -> raw bytes of the blob at that offset
        └── v1/local/<blob digest>              -> {"dir": "<layer id>", "bytes": <total>,
                                                    "created": <ns>}

``local`` marks a layer materialised into ``<root>/layers/<dir>`` (the hot path: later mounts
use that directory, not FUSE); ``bytes`` is the sum of its regular files' sizes. The key was
added within version 1: older readers ignore it and mount the layer lazily, which is correct.

The ``range`` values are exactly what ``load_lazy_layer`` read (footer tail, TOC): replaying
them re-indexes the layer through the same validating code, with no request.
Values are JSON or raw bytes, never pickle. One write transaction per operation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import lmdb

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument, Unavailable

SCHEMA_VERSION = 1
DB_NAME = b"layers"
MAP_SIZE = 8 << 30  # address space, not disk: TOCs of big images run to megabytes
_SCHEMA = b"v1/schema"
_LAYER = "v1/layer/"
_RANGE = "v1/range/"
_LOCAL = "v1/local/"


@dataclass(frozen=True, slots=True)
class LayerRecord:
    digest: Digest  # the layer blob
    ref: str  # the image reference its chunks are fetched from
    size: int
    format: str
    toc_digest: Digest
    created_ns: int = 0


def _encode(rec: LayerRecord) -> bytes:
    return json.dumps({"ref": rec.ref, "size": rec.size, "format": rec.format,
                       "toc_digest": str(rec.toc_digest), "created": rec.created_ns},
                      sort_keys=True).encode()


def _decode(key: bytes, value: bytes) -> LayerRecord:
    digest = parse_digest(key.decode()[len(_LAYER):])
    try:
        d = json.loads(value)
        return LayerRecord(digest, str(d["ref"]), int(d["size"]), str(d["format"]),
                           parse_digest(d["toc_digest"]), int(d.get("created", 0)))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"layers.lmdb: record of {digest} is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """A materialised layer: its directory's name under ``<root>/layers``."""

    digest: Digest
    dir: str
    total_bytes: int
    created_ns: int = 0


class LayerDB:
    """Lazy-layer records. Open with ``LayerDB.open(root / "layers.lmdb")``."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(DB_NAME)
        with env.begin(write=True, db=self._db) as tx:
            raw = tx.get(_SCHEMA)
            if raw is None:
                tx.put(_SCHEMA, json.dumps({"version": SCHEMA_VERSION}).encode())
            elif json.loads(raw).get("version") != SCHEMA_VERSION:
                raise InvalidArgument(f"layers.lmdb: unsupported schema {raw!r}")

    @classmethod
    def open(cls, path: Path) -> LayerDB:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=2, subdir=True)
        except lmdb.Error as exc:
            raise Unavailable(f"layers.lmdb at {path}: cannot open: {exc}") from exc
        return cls(env)

    def close(self) -> None:
        self._env.close()

    def put(self, rec: LayerRecord, ranges: Mapping[int, bytes]) -> LayerRecord:
        """Record a layer and the blob ranges its index came from (replacing any old ones)."""
        if not rec.created_ns:
            rec = LayerRecord(rec.digest, rec.ref, rec.size, rec.format, rec.toc_digest,
                              time.time_ns())
        with self._env.begin(write=True, db=self._db) as tx:
            self._drop_ranges(tx, rec.digest)
            tx.put(f"{_LAYER}{rec.digest}".encode(), _encode(rec))
            for offset, data in ranges.items():
                tx.put(f"{_RANGE}{rec.digest}/{offset:016x}".encode(), data)
        return rec

    def get(self, digest: Digest) -> LayerRecord | None:
        key = f"{_LAYER}{digest}".encode()
        with self._env.begin(db=self._db) as tx:
            raw = tx.get(key)
            return None if raw is None else _decode(key, bytes(raw))

    def ranges(self, digest: Digest) -> dict[int, bytes]:
        prefix = f"{_RANGE}{digest}/".encode()
        out: dict[int, bytes] = {}
        with self._env.begin(db=self._db) as tx:
            for key, value in _prefixed(tx.cursor(), prefix):
                out[int(key[len(prefix):], 16)] = bytes(value)
        return out

    def all(self) -> list[LayerRecord]:
        prefix = _LAYER.encode()
        with self._env.begin(db=self._db) as tx:
            return [_decode(bytes(k), bytes(v)) for k, v in _prefixed(tx.cursor(), prefix)]

    def remove(self, digest: Digest) -> bool:
        with self._env.begin(write=True, db=self._db) as tx:
            self._drop_ranges(tx, digest)
            tx.delete(f"{_LOCAL}{digest}".encode())
            return bool(tx.delete(f"{_LAYER}{digest}".encode()))

    def set_local(self, rec: LocalRecord) -> LocalRecord:
        """Record that the layer is materialised (after its directory was renamed in place)."""
        if not rec.created_ns:
            rec = LocalRecord(rec.digest, rec.dir, rec.total_bytes, time.time_ns())
        value = json.dumps({"dir": rec.dir, "bytes": rec.total_bytes,
                            "created": rec.created_ns}, sort_keys=True).encode()
        with self._env.begin(write=True, db=self._db) as tx:
            if tx.get(f"{_LAYER}{rec.digest}".encode()) is None:
                raise InvalidArgument(f"layers.lmdb: layer {rec.digest} is not recorded")
            tx.put(f"{_LOCAL}{rec.digest}".encode(), value)
        return rec

    def local(self, digest: Digest) -> LocalRecord | None:
        with self._env.begin(db=self._db) as tx:
            raw = tx.get(f"{_LOCAL}{digest}".encode())
        if raw is None:
            return None
        try:
            d = json.loads(bytes(raw))
            return LocalRecord(digest, str(d["dir"]), int(d["bytes"]), int(d.get("created", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"layers.lmdb: local record of {digest} is malformed: "
                                  f"{exc}") from None

    def _drop_ranges(self, tx: lmdb.Transaction, digest: Digest) -> None:
        prefix = f"{_RANGE}{digest}/".encode()
        for key in [bytes(k) for k, _ in _prefixed(tx.cursor(), prefix)]:
            tx.delete(key)


def _prefixed(cursor: lmdb.Cursor, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    if not cursor.set_range(prefix):
        return
    for key, value in cursor:
        if not bytes(key).startswith(prefix):
            return
        yield bytes(key), bytes(value)


__all__ = ["LayerDB", "LayerRecord", "LocalRecord"]
