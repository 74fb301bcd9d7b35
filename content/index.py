"""The content store's index: one row per verified blob.

The rows live in the database ``content`` of the root's one environment (``metadata.lmdb``,
opened by content.metadata, whose docstring draws every database)::

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

from content.digest import Digest, parse_digest
from content.errors import Internal, NotFound
from content.metadata import CONTENT_DB, MetadataDB, Txn

SCHEMA_VERSION = b"1"
DB_NAME = CONTENT_DB
_VERSION_KEY = b"content/version"
_BLOB_PREFIX = b"content/v1/blob/"


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
    """Digest → :class:`BlobInfo` rows, in the ``content`` database of ``metadata``."""

    def __init__(self, metadata: MetadataDB) -> None:
        self._md = metadata
        self._owns = False

        def check(txn: Txn) -> None:
            version = txn.get(DB_NAME, _VERSION_KEY)
            if version is None:
                txn.put(DB_NAME, _VERSION_KEY, SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise Internal(
                    f"content index {metadata.path}: schema version {version.decode()!r} is "
                    f"not supported (this build reads {SCHEMA_VERSION.decode()!r})"
                )

        metadata.write(check)

    @classmethod
    def open(cls, root: Path) -> ContentIndex:
        """An index with its own handle on ``<root>/metadata.lmdb`` (closed with it)."""
        metadata = MetadataDB.open(root)
        try:
            index = cls(metadata)
        except BaseException:
            metadata.close()
            raise
        index._owns = True
        return index

    def close(self) -> None:
        if self._owns:
            self._md.close()

    def get(self, digest: Digest) -> BlobInfo | None:
        value = self._md.read(lambda txn: txn.get(DB_NAME, _key(digest)))
        return None if value is None else _decode(_key(digest), value)

    def all(self) -> list[BlobInfo]:
        return self._md.read(_scan)

    def put_if_absent(self, info: BlobInfo) -> tuple[BlobInfo, bool]:
        """Insert ``info`` unless a row exists; return (the row now stored, inserted?)."""
        key = _key(info.digest)

        def body(txn: Txn) -> tuple[BlobInfo, bool]:
            existing = txn.get(DB_NAME, key)
            if existing is not None:
                return _decode(key, existing), False
            txn.put(DB_NAME, key, _encode(info))
            return info, True

        return self._md.write(body)

    def update(self, digest: Digest, change: Callable[[BlobInfo], BlobInfo]) -> BlobInfo:
        """Rewrite one row with ``change`` (a plain function, run inside the transaction)."""
        key = _key(digest)

        def body(txn: Txn) -> BlobInfo:
            value = txn.get(DB_NAME, key)
            if value is None:
                raise NotFound(f"content {digest}: not found")
            info = change(_decode(key, value))
            txn.put(DB_NAME, key, _encode(info))
            return info

        return self._md.write(body)

    def delete(self, digest: Digest) -> bool:
        return self._md.write(lambda txn: txn.delete(DB_NAME, _key(digest)))

    def sweep(self, select: Callable[[list[BlobInfo], Txn], Iterable[Digest]]) -> list[Digest]:
        """Delete the rows ``select`` picks from all rows, atomically with the read.

        Because LMDB serialises write transactions, no blob can be committed between the
        moment ``select`` sees the rows and the moment its choice is deleted. ``select`` is
        given the transaction too, to read what else decides (other stores' records) in it.
        """

        def body(txn: Txn) -> list[Digest]:
            chosen = list(select(_scan(txn), txn))
            return [d for d in chosen if txn.delete(DB_NAME, _key(d))]

        return self._md.write(body)


def _scan(txn: Txn) -> list[BlobInfo]:
    return [_decode(key, value) for key, value in txn.scan(DB_NAME, _BLOB_PREFIX)]
