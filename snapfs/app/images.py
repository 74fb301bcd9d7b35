"""The image table: names (``127.0.0.1:5000/app:1``) → what they resolved to when pulled.

Like containerd's image store, a record holds the manifest descriptor plus what snapfs needs
to run the image without asking the registry again: the config digest and the layer chain IDs
(the top one is the parent of a container's snapshot).

LMDB layout (``<root>/images.lmdb``, owned by this module only)::

    b"v1/image/" + name  →  JSON {"name", "target": descriptor, "config": digest,
                                   "chain_ids": [digest, …], "lazy": bool,
                                   "created": float, "updated": float}
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from content.descriptor import Descriptor
from content.digest import Digest, parse_digest
from content.errors import NotFound

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
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(root / "images.lmdb"), subdir=True, map_size=1 << 30,
                              max_dbs=1, lock=True)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _txn(self, write: bool) -> Iterator[Any]:
        with self._env.begin(write=write) as txn:
            yield txn

    def get(self, name: str) -> ImageRecord:
        with self._txn(False) as txn:
            raw = txn.get(_PREFIX + name.encode())
        if raw is None:
            raise NotFound(f"image {name} not found")
        return ImageRecord.from_json(json.loads(raw))

    def put(self, record: ImageRecord) -> ImageRecord:
        """Create or replace ``record.name``, keeping the original creation time."""
        key = _PREFIX + record.name.encode()
        now = time.time()
        with self._txn(True) as txn:
            old = txn.get(key)
            created = json.loads(old)["created"] if old is not None else now
            stored = ImageRecord(record.name, record.target, record.config, record.chain_ids,
                                 record.lazy, created, now)
            txn.put(key, json.dumps(stored.to_json()).encode())
        return stored

    def delete(self, name: str) -> None:
        with self._txn(True) as txn:
            if not txn.delete(_PREFIX + name.encode()):
                raise NotFound(f"image {name} not found")

    def list(self) -> list[ImageRecord]:
        out = []
        with self._txn(False) as txn:
            cur = txn.cursor()
            if cur.set_range(_PREFIX):
                for key, raw in cur:
                    if not bytes(key).startswith(_PREFIX):
                        break
                    out.append(ImageRecord.from_json(json.loads(raw)))
        return out
