"""Image and layer sizes from records alone, for ``snapfs images`` (which must start without
trio, the registry or FUSE) and ``snapfs df``.

An image's size is the uncompressed bytes of its layers' files; ``compressed`` the sizes of
their blobs, as its manifest lists them; ``local`` what of it is on this disk. A native
layer is all local (its snapshot's size, counted at commit). A lazy layer's numbers are the
ones the process serving it last persisted (``usage/<digest>`` in the layer records,
``snapfs.lazy.layerdb``), or, when a daemon serves, the daemon's own (its status socket);
``snapfs df`` recounts them from the chunk cache itself. The
planning is pure (:func:`layer_rows`, :func:`image_usage`). Must not print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from snapfs.snapshot.metastore import SnapshotRecord
from snapfs.snapshot.types import Kind

if TYPE_CHECKING:
    from snapfs.app.images import ImageRecord


@dataclass(frozen=True, slots=True)
class ImageUsage:
    name: str
    compressed: int
    uncompressed: int
    local: int
    lazy: bool


@dataclass(frozen=True, slots=True)
class LayerRow:
    snapshot: str  # the chain ID it is committed under
    kind: str  # native | lazy | local (a lazy layer, materialised)
    total_bytes: int
    local_bytes: int


LazySizes = Mapping[str, tuple[str, int, int]]  # layer id -> (state, total, local)


def layer_rows(records: Iterable[SnapshotRecord], lazy: LazySizes) -> dict[str, LayerRow]:
    """Each committed snapshot as a layer, by name; lazy ones by their layer (pure)."""
    rows = {}
    for r in records:
        if r.kind != Kind.COMMITTED:
            continue
        if r.lower:
            state, total, local = lazy.get(Path(r.lower).name, ("lazy", 0, 0))
            rows[r.key] = LayerRow(r.key, state, total, local)
        else:
            rows[r.key] = LayerRow(r.key, "native", r.size, r.size)
    return rows


def manifest_layers_size(blobs: Path, record: ImageRecord) -> int:
    """The compressed size of the image's layers, from its manifest blob (0 if gone)."""
    digest = record.target.digest
    try:
        doc = json.loads((blobs / digest.algorithm / digest.hex).read_bytes())
        return sum(int(layer["size"]) for layer in doc.get("layers") or [])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def image_usage(record: ImageRecord, compressed: int, rows: Mapping[str, LayerRow]
                ) -> ImageUsage:
    """One image's sizes from its layers' rows (pure)."""
    layers = [rows[str(c)] for c in record.chain_ids if str(c) in rows]
    return ImageUsage(record.name, compressed, sum(r.total_bytes for r in layers),
                      sum(r.local_bytes for r in layers),
                      record.lazy or any(r.kind != "native" for r in layers))


def image_sizes(root: Path, records: Sequence[ImageRecord], live: LazySizes | None = None
                ) -> dict[str, ImageUsage]:
    """Every image's sizes, by name, from ``root``'s records (blocking, no trio); ``live``:
    a serving daemon's own numbers for its lazy layers, which win over the records."""
    from content.metadata import MetadataDB
    from snapfs.lazy.layerdb import LayerDB, layer_id, usage_key
    from snapfs.snapshot.metastore import MetaStore

    with MetadataDB.open(root) as md:
        snaps = MetaStore(md).with_transaction(False, lambda tx: list(tx.walk()))
        db = LayerDB(md)
        lazy: dict[str, tuple[str, int, int]] = {}
        for rec in db.all():
            seen = db.counts(usage_key(rec.digest))
            local = db.local(rec.digest)
            total = seen.get("total_bytes", local.total_bytes if local else 0)
            lazy[layer_id(rec.digest)] = ("local" if local else "lazy", total,
                                          total if local else seen.get("local_bytes", 0))
    rows = layer_rows(snaps, {**lazy, **(live or {})})
    blobs = root / "content" / "blobs"
    return {r.name: image_usage(r, manifest_layers_size(blobs, r), rows) for r in records}


__all__ = ["ImageUsage", "LayerRow", "image_sizes", "image_usage", "layer_rows",
           "manifest_layers_size"]
