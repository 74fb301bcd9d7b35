"""The content store's LMDB index: one row per verified blob.

This is the only module that opens LMDB for content (the snapshotter keeps its own
environment). Layout of ``<root>/meta.lmdb`` (a single unnamed database)::

    key                                   value
    ─────────────────────────────────────  ──────────────────────────────────────────────
    b"content/version"                    b"1"                     schema version
    b"content/v1/blob/" + b"<alg>:<hex>"  JSON {"size": int, "mediatype": str,
                                                "labels": {str: str},
                                                "created": float, "updated": float}

Keys are prefixed with the schema version so a future layout can live beside this one
while it is migrated. Values are JSON, never pickle. Every operation is one transaction;
transaction bodies are plain functions, so nothing awaits while a write transaction is open.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from content.digest import Digest, parse_digest
from content.errors import Internal, NotFound

SCHEMA_VERSION = b"1"
_VERSION_KEY = b"content/version"
_BLOB_PREFIX = b"content/v1/blob/"
# LMDB reserves address space, not disk: a large map costs nothing until it is used.
_DEFAULT_MAP_SIZE = 1 << 32


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    media_type: str
    labels: Mapping[str, str]
    created_at: float
    updated_at: float


def _key(digest: Digest) -> bytes:
    return _BLOB_PREFIX + str(digest).encode()


def _encode(info: BlobInfo) -> bytes:
    row = {
        "size": info.size,
        "mediatype": info.media_type,
        "labels": dict(info.labels),
        "created": info.created_at,
        "updated": info.updated_at,
    }
    return json.dumps(row, sort_keys=True, separators=(",", ":")).encode()


def _decode(key: bytes, value: bytes) -> BlobInfo:
    digest = parse_digest(key[len(_BLOB_PREFIX) :].decode())
    try:
        row: dict[str, Any] = json.loads(value)
        return BlobInfo(
            digest=digest,
            size=int(row["size"]),
            media_type=str(row["mediatype"]),
            labels={str(k): str(v) for k, v in row["labels"].items()},
            created_at=float(row["created"]),
            updated_at=float(row["updated"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Internal(f"content index row for {digest} is corrupt: {exc}") from exc


class ContentIndex:
    """Digest → :class:`BlobInfo` rows in ``meta.lmdb``."""

    def __init__(self, path: Path, map_size: int = _DEFAULT_MAP_SIZE) -> None:
        self._env = lmdb.open(str(path), subdir=False, map_size=map_size, max_dbs=0)
        with self._env.begin(write=True) as txn:
            version = txn.get(_VERSION_KEY)
            if version is None:
                txn.put(_VERSION_KEY, SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                self._env.close()
                raise Internal(
                    f"content index {path}: schema version {version.decode()!r} is not "
                    f"supported (this build reads {SCHEMA_VERSION.decode()!r})"
                )

    def close(self) -> None:
        self._env.close()

    def get(self, digest: Digest) -> BlobInfo | None:
        with self._env.begin() as txn:
            value = txn.get(_key(digest))
        return None if value is None else _decode(_key(digest), value)

    def all(self) -> list[BlobInfo]:
        with self._env.begin() as txn:
            return _scan(txn)

    def put_if_absent(self, info: BlobInfo) -> tuple[BlobInfo, bool]:
        """Insert ``info`` unless a row exists; return (the row now stored, inserted?)."""
        key = _key(info.digest)
        with self._env.begin(write=True) as txn:
            existing = txn.get(key)
            if existing is not None:
                return _decode(key, existing), False
            txn.put(key, _encode(info))
            return info, True

    def update(self, digest: Digest, change: Callable[[BlobInfo], BlobInfo]) -> BlobInfo:
        """Rewrite one row with ``change`` (a plain function, run inside the transaction)."""
        key = _key(digest)
        with self._env.begin(write=True) as txn:
            value = txn.get(key)
            if value is None:
                raise NotFound(f"content {digest}: not found")
            info = change(_decode(key, value))
            txn.put(key, _encode(info))
            return info

    def delete(self, digest: Digest) -> bool:
        with self._env.begin(write=True) as txn:
            return bool(txn.delete(_key(digest)))

    def sweep(self, select: Callable[[list[BlobInfo]], Iterable[Digest]]) -> list[Digest]:
        """Delete the rows ``select`` picks from all rows, atomically with the read.

        Because LMDB serialises write transactions, no blob can be committed between the
        moment ``select`` sees the rows and the moment its choice is deleted.
        """
        with self._env.begin(write=True) as txn:
            chosen = list(select(_scan(txn)))
            return [d for d in chosen if txn.delete(_key(d))]


def _scan(txn: lmdb.Transaction) -> list[BlobInfo]:
    rows: list[BlobInfo] = []
    cursor = txn.cursor()
    if not cursor.set_range(_BLOB_PREFIX):
        return rows
    for raw_key, raw_value in cursor:
        key = bytes(raw_key)
        if not key.startswith(_BLOB_PREFIX):
            break
        rows.append(_decode(key, bytes(raw_value)))
    return rows
