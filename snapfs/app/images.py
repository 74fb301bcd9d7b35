"""The image table: names (``127.0.0.1:5000/app:1``) → what they resolved to when pulled.

Like containerd's image store, a record holds the manifest descriptor plus what snapfs needs
to run the image without asking the registry again: the config digest and the layer chain IDs
(the top one is the parent of a container's snapshot).

Records live in the database ``images`` of the root's one environment (``metadata.lmdb``,
opened by content.metadata, whose docstring draws every database); only this module reads or
writes it::

    b"v1/image/" + name  →  JSON {"name", "target": descriptor, "config": digest,
                                   "chain_ids": [digest, …], "lazy": bool,
                                   "created": float, "updated": float}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from content.descriptor import Descriptor
from content.digest import Digest, parse_digest
from content.errors import InvalidArgument, NotFound
from content.metadata import IMAGES_DB, MetadataDB, Txn

DB_NAME = IMAGES_DB
_PREFIX = b"v1/image/"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    name: str
    target: Descriptor
    config: Digest
    chain_ids: tuple[Digest, ...]
    lazy: bool = False
    created: float = 0.0
    updated: float = 0.0

    @property
    def top_chain_id(self) -> Digest | None:
        return self.chain_ids[-1] if self.chain_ids else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target.to_json(),
            "config": str(self.config),
            "chain_ids": [str(c) for c in self.chain_ids],
            "lazy": self.lazy,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageRecord:
        return cls(
            name=obj["name"],
            target=Descriptor.from_json(obj["target"]),
            config=parse_digest(obj["config"]),
            chain_ids=tuple(parse_digest(c) for c in obj["chain_ids"]),
            lazy=bool(obj.get("lazy", False)),
            created=float(obj["created"]),
            updated=float(obj["updated"]),
        )


class ImageStore:
    """The image table in ``metadata``; ``ImageStore(root)`` opens its own handle on
    ``<root>/metadata.lmdb`` (closed with the store), a ``metadata=`` handle stays open."""

    def __init__(self, root: Path | None = None, *, metadata: MetadataDB | None = None) -> None:
        self._owns = metadata is None
        if metadata is None:
            if root is None:
                raise InvalidArgument("ImageStore: give a root or a metadata handle")
            metadata = MetadataDB.open(root)
        elif root is not None:
            raise InvalidArgument("ImageStore: give a root or a metadata handle, not both")
        self._md = metadata

    def close(self) -> None:
        if self._owns:
            self._md.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, name: str) -> ImageRecord:
        raw = self._md.read(lambda txn: txn.get(DB_NAME, _PREFIX + name.encode()))
        if raw is None:
            raise NotFound(f"image {name} not found")
        return ImageRecord.from_json(json.loads(raw))

    def put(self, record: ImageRecord) -> ImageRecord:
        """Create or replace ``record.name``, keeping the original creation time."""
        key = _PREFIX + record.name.encode()
        now = time.time()

        def body(txn: Txn) -> ImageRecord:
            old = txn.get(DB_NAME, key)
            created = json.loads(old)["created"] if old is not None else now
            stored = ImageRecord(record.name, record.target, record.config, record.chain_ids,
                                 record.lazy, created, now)
            txn.put(DB_NAME, key, json.dumps(stored.to_json()).encode())
            return stored

        return self._md.write(body)

    def delete(self, name: str) -> None:
        if not self._md.write(lambda txn: txn.delete(DB_NAME, _PREFIX + name.encode())):
            raise NotFound(f"image {name} not found")

    def list(self, *, txn: Txn | None = None) -> list[ImageRecord]:
        """Every image; ``txn``: read inside that transaction (e.g. a content GC's)."""
        rows = self._md.read(lambda tx: list(tx.scan(DB_NAME, _PREFIX)), txn=txn)
        return [ImageRecord.from_json(json.loads(raw)) for _, raw in rows]
