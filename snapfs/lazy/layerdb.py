"""Records of lazy layers: the only module that reads or writes the ``layers`` database of
``<root>/metadata.lmdb`` (the root's one environment, content.metadata).

The snapshot records (``snapshots``, same environment) say which directory a committed lazy
snapshot uses; these say how to bring that directory back (which blob of which image, and the
bytes its index was read from) without the network. Both live in one environment, so a
layer record can commit in the snapshotter's transaction: every method takes an optional
``txn`` (a metastore body's ``tx.txn``) and then runs inside it instead of its own.

Key schema, version 1, in the named database ``layers`` (keys are UTF-8)::

    metadata.lmdb
    └── db "layers"
        ├── v1/schema                           -> {"version": 1}
        ├── v1/layer/<blob digest>              -> {"ref": "<image ref>", "size": <blob size>,
        │                                           "format": "estargz"|"zstd:chunked"|
        │                                                     "gzip-index",
        │                                           "toc_digest": "<digest>", "created": <ns>}
        ├── v1/range/<blob digest>/<offset:016x> -> raw bytes of the blob at that offset
        ├── v1/local/<blob digest>              -> {"dir": "<layer id>", "bytes": <total>,
        │                                           "created": <ns>}
        ├── v1/stats/<blob digest>              -> {"requests": <n>, "bytes_fetched": <n>, …}
        ├── v1/usage/<blob digest>              -> {"total_bytes": <n>, "local_bytes": <n>}
        └── v1/counters/<name>                  -> {"<counter>": <n>, …} (e.g. "cache":
                                                    evictions by cause)

``stats`` keeps a layer's fetch counters (``FetchStats``) and ``counters`` root-wide ones
(chunk cache evictions), so that ``snapfs status`` and ``df`` show the same numbers with or
without a daemon; both keys were added within version 1 (older readers ignore them). A
process adds what it counted since its last flush (:meth:`LayerDB.add_counts`), so several
processes on one root add up instead of overwriting each other. ``usage`` is what the
serving process last saw of a layer's bytes (total, held locally), for ``snapfs images``,
which reads records only; it is replaced, not added to.

``local`` marks a layer materialised into ``<root>/layers/<dir>`` (the hot path: later mounts
use that directory, not FUSE); ``bytes`` is the sum of its regular files' sizes. The key was
added within version 1: older readers ignore it and mount the layer lazily, which is correct.

The ``range`` values are exactly what ``load_lazy_layer`` read (footer tail, TOC): replaying
them re-indexes the layer through the same validating code, with no request. A
``gzip-index`` layer has one range, at 0: its side index (``toc_digest`` is the index's
digest), parsed again by ``content.gzlayer`` (``snapfs.lazy.indexer.reload_layer``).
Values are JSON or raw bytes, never pickle. One write transaction per operation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument
from content.metadata import LAYERS_DB, MetadataDB, Txn

SCHEMA_VERSION = 1
DB_NAME = LAYERS_DB
_SCHEMA = b"v1/schema"
_LAYER = "v1/layer/"
_RANGE = "v1/range/"
_LOCAL = "v1/local/"
_STATS = "v1/stats/"
_COUNTERS = "v1/counters/"


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
        raise InvalidArgument(f"layer records: record of {digest} is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """A materialised layer: its directory's name under ``<root>/layers``."""

    digest: Digest
    dir: str
    total_bytes: int
    created_ns: int = 0


class LayerDB:
    """Lazy-layer records in ``metadata``. ``LayerDB.open(root)`` opens its own handle on
    ``<root>/metadata.lmdb``, closed with it; a handle passed to the constructor stays open.

    ``txn``: run inside that transaction (another store's, on the same environment; a write
    transaction for the methods that write) instead of in one of the method's own."""

    def __init__(self, metadata: MetadataDB) -> None:
        self._md = metadata
        self._owns = False

        def check(tx: Txn) -> None:
            raw = tx.get(DB_NAME, _SCHEMA)
            if raw is None:
                tx.put(DB_NAME, _SCHEMA, json.dumps({"version": SCHEMA_VERSION}).encode())
            elif json.loads(raw).get("version") != SCHEMA_VERSION:
                raise InvalidArgument(f"layer records: unsupported schema {raw!r}")

        metadata.write(check)

    @classmethod
    def open(cls, root: Path) -> LayerDB:
        metadata = MetadataDB.open(root)
        try:
            db = cls(metadata)
        except BaseException:
            metadata.close()
            raise
        db._owns = True
        return db

    @property
    def metadata(self) -> MetadataDB:
        return self._md

    def close(self) -> None:
        if self._owns:
            self._md.close()

    def put(self, rec: LayerRecord, ranges: Mapping[int, bytes], *,
            txn: Txn | None = None) -> LayerRecord:
        """Record a layer and the blob ranges its index came from (replacing any old ones)."""
        if not rec.created_ns:
            rec = LayerRecord(rec.digest, rec.ref, rec.size, rec.format, rec.toc_digest,
                              time.time_ns())

        def body(tx: Txn) -> LayerRecord:
            _drop_ranges(tx, rec.digest)
            tx.put(DB_NAME, f"{_LAYER}{rec.digest}".encode(), _encode(rec))
            for offset, data in ranges.items():
                tx.put(DB_NAME, f"{_RANGE}{rec.digest}/{offset:016x}".encode(), data)
            return rec

        return self._md.write(body, txn=txn)

    def get(self, digest: Digest, *, txn: Txn | None = None) -> LayerRecord | None:
        key = f"{_LAYER}{digest}".encode()
        raw = self._md.read(lambda tx: tx.get(DB_NAME, key), txn=txn)
        return None if raw is None else _decode(key, raw)

    def ranges(self, digest: Digest, *, txn: Txn | None = None) -> dict[int, bytes]:
        prefix = f"{_RANGE}{digest}/".encode()
        rows = self._md.read(lambda tx: list(tx.scan(DB_NAME, prefix)), txn=txn)
        return {int(key[len(prefix):], 16): value for key, value in rows}

    def all(self, *, txn: Txn | None = None) -> list[LayerRecord]:
        rows = self._md.read(lambda tx: list(tx.scan(DB_NAME, _LAYER.encode())), txn=txn)
        return [_decode(k, v) for k, v in rows]

    def remove(self, digest: Digest, *, txn: Txn | None = None) -> bool:
        def body(tx: Txn) -> bool:
            _drop_ranges(tx, digest)
            tx.delete(DB_NAME, f"{_LOCAL}{digest}".encode())
            tx.delete(DB_NAME, f"{_STATS}{digest}".encode())
            tx.delete(DB_NAME, f"v1/usage/{digest}".encode())
            return tx.delete(DB_NAME, f"{_LAYER}{digest}".encode())

        return self._md.write(body, txn=txn)

    def set_local(self, rec: LocalRecord, *, txn: Txn | None = None) -> LocalRecord:
        """Record that the layer is materialised (after its directory was renamed in place)."""
        if not rec.created_ns:
            rec = LocalRecord(rec.digest, rec.dir, rec.total_bytes, time.time_ns())
        value = json.dumps({"dir": rec.dir, "bytes": rec.total_bytes,
                            "created": rec.created_ns}, sort_keys=True).encode()

        def body(tx: Txn) -> LocalRecord:
            if tx.get(DB_NAME, f"{_LAYER}{rec.digest}".encode()) is None:
                raise InvalidArgument(f"layer records: layer {rec.digest} is not recorded")
            tx.put(DB_NAME, f"{_LOCAL}{rec.digest}".encode(), value)
            return rec

        return self._md.write(body, txn=txn)

    def local(self, digest: Digest, *, txn: Txn | None = None) -> LocalRecord | None:
        raw = self._md.read(lambda tx: tx.get(DB_NAME, f"{_LOCAL}{digest}".encode()), txn=txn)
        if raw is None:
            return None
        try:
            d = json.loads(raw)
            return LocalRecord(digest, str(d["dir"]), int(d["bytes"]), int(d.get("created", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"layer records: local record of {digest} is malformed: "
                                  f"{exc}") from None


    def counts(self, key: str, *, txn: Txn | None = None) -> dict[str, int]:
        """Persisted counters: ``stats/<digest>`` of a layer or ``counters/<name>``."""
        raw = self._md.read(lambda tx: tx.get(DB_NAME, _counts_key(key)), txn=txn)
        return {} if raw is None else _int_map(raw)

    def add_counts(self, deltas: Mapping[str, Mapping[str, int]], *,
                   txn: Txn | None = None) -> None:
        """Add ``deltas`` (by key, as for :meth:`counts`) in one write transaction. A layer
        whose record is gone (released meanwhile) gets none."""
        def body(tx: Txn) -> None:
            for key, delta in deltas.items():
                if not any(delta.values()):
                    continue
                if key.startswith("stats/") and tx.get(
                        DB_NAME, f"{_LAYER}{key[len('stats/'):]}".encode()) is None:
                    continue
                k = _counts_key(key)
                old = tx.get(DB_NAME, k)
                merged = _int_map(old) if old is not None else {}
                for name, n in delta.items():
                    merged[name] = merged.get(name, 0) + int(n)
                tx.put(DB_NAME, k, json.dumps(merged, sort_keys=True).encode())

        self._md.write(body, txn=txn)


    def set_counts(self, values: Mapping[str, Mapping[str, int]], *,
                   txn: Txn | None = None) -> None:
        """Replace the values under each key (``usage/<digest>`` of a recorded layer)."""
        def body(tx: Txn) -> None:
            for key, value in values.items():
                layer = key.partition("/")[2]
                if tx.get(DB_NAME, f"{_LAYER}{layer}".encode()) is None:
                    continue  # released meanwhile
                tx.put(DB_NAME, _counts_key(key), json.dumps(
                    {k: int(v) for k, v in value.items()}, sort_keys=True).encode())

        self._md.write(body, txn=txn)


def layer_id(digest: Digest) -> str:
    """The layer's directory name under the FUSE mount (short: overlay options are limited)."""
    return digest.hex if digest.algorithm == "sha256" else f"{digest.algorithm}-{digest.hex}"


def stats_key(digest: object) -> str:
    """The key of a layer's persisted fetch counters (for :meth:`LayerDB.counts`)."""
    return f"stats/{digest}"


def usage_key(digest: object) -> str:
    """The key of a layer's last seen usage: ``total_bytes``, ``local_bytes``."""
    return f"usage/{digest}"


def _counts_key(key: str) -> bytes:
    if not key.startswith(("stats/", "counters/", "usage/")):
        raise InvalidArgument(f"layer records: no counters under {key!r}")
    return f"v1/{key}".encode()


def _int_map(raw: bytes) -> dict[str, int]:
    try:
        d = json.loads(raw)
        return {str(k): int(v) for k, v in d.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"layer records: counters are malformed: {exc}") from None


def _drop_ranges(tx: Txn, digest: Digest) -> None:
    prefix = f"{_RANGE}{digest}/".encode()
    for key in [k for k, _ in tx.scan(DB_NAME, prefix)]:
        tx.delete(DB_NAME, key)


__all__ = ["LayerDB", "LayerRecord", "LocalRecord", "layer_id", "stats_key",
           "usage_key"]
