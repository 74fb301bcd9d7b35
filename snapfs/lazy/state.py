"""Lazy-layer state: one frozen record per layer, one table of them.

A layer's life is one state machine::

    (prepare / restore) ──▶ lazy ──▶ fetching ──▶ local ──▶ (released)
                             │                               ▲
                             └───────────────────────────────┘  containerd's GC, any time

- **lazy**: its FUSE directory serves reads; only what is read (and the startup set) is local;
- **fetching**: the background fetch is pulling the rest;
- **local**: complete, its blob and diffID verified, materialised into a plain directory;
  later mounts use it, no FUSE (mounts made before read through FUSE from that directory);
- **broken**: its blob or diffID did not verify: out of service, every read fails;
- **released**: no snapshot uses it any more; its record is gone, and what is left on disk
  (the FUSE directory, the materialised directory) waits in the table until no mount in any
  mount namespace uses it (``snapfs.lazy.lifecycle.sweep``).

:class:`LayerState` replaces the parallel dicts the layer registry used to keep; every change
is a ``replace`` through :class:`LayerTable`, so a reader never sees half an update. Must not
do I/O: the table is plain data, read and written from the trio loop only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import trio

from snapfs.lazy.fetcher import FetchStats
from snapfs.lazy.layerdb import LayerRecord
from snapfs.lazy.view import LazyLayerView

State = Literal["lazy", "fetching", "local", "broken"]
STATES: tuple[State, ...] = ("lazy", "fetching", "local", "broken")


@dataclass(frozen=True, slots=True)
class LayerState:
    """Everything this process knows about one lazy layer (by layer id = digest hex)."""

    ident: str
    record: LayerRecord | None  # None once released: only leftovers to sweep remain
    view: LazyLayerView | None = None  # while the layer has a FUSE directory
    local_dir: Path | None = None  # once materialised (the hot path)
    total_bytes: int = 0  # sum of its regular files' sizes (uncompressed)
    stats: FetchStats = field(default_factory=FetchStats)
    fetching: bool = False
    profile: tuple[str, ...] = ()  # a recorded profile's paths: its startup set
    startup: trio.Event = field(default_factory=trio.Event)  # set once the startup set is in
    scope: trio.CancelScope | None = None  # of its fetch task, while one runs
    # Since when its FUSE directory is no longer handed out (materialised or released);
    # None while it is. -inf: released, no grace period owed.
    fuse_unused_since: float | None = None
    doomed_dir: Path | None = None  # a released layer's materialised dir, to delete once unused
    # The Prepare's labels (image reference, manifest digest): where its diffID is found.
    labels: Mapping[str, str] = field(default_factory=dict)
    broken: str | None = None  # why it is out of service: a verification failure
    settled: trio.Event = field(default_factory=trio.Event)  # set once local or broken
    # Profile recordings that need it served through FUSE although it is local (a
    # recording sees only what FUSE serves): new mounts keep its FUSE directory meanwhile.
    held: int = 0
    # Its fetch counters as last persisted by this process (snapfs.lazy.counters).
    saved: Mapping[str, int] = field(default_factory=dict)

    @property
    def released(self) -> bool:
        return self.record is None

    @property
    def state(self) -> State:
        if self.broken is not None:
            return "broken"
        if self.local_dir is not None or self.view is None:
            return "local"
        return "fetching" if self.fetching else "lazy"

    @property
    def has_leftovers(self) -> bool:
        """Whether a sweep still has something to drop for it."""
        return self.fuse_unused_since is not None or self.doomed_dir is not None


class LayerTable:
    """The layers of one process, by layer id. Plain dict underneath; values are frozen."""

    def __init__(self) -> None:
        self._rows: dict[str, LayerState] = {}

    def get(self, ident: str) -> LayerState | None:
        return self._rows.get(ident)

    def live(self, ident: str) -> LayerState | None:
        """The layer if it is known and not released."""
        row = self._rows.get(ident)
        return None if row is None or row.released else row

    def put(self, row: LayerState) -> LayerState:
        self._rows[row.ident] = row
        return row

    def update(self, ident: str, **changes: Any) -> LayerState:
        """Replace fields of a known layer; a layer released and swept meanwhile is gone, in
        which case nothing happens and KeyError says so."""
        row = replace(self._rows[ident], **changes)
        self._rows[ident] = row
        return row

    def release(self, ident: str) -> LayerState | None:
        """Mark a live layer released: forget its record, keep what a sweep must drop."""
        row = self.live(ident)
        if row is None:
            return None
        return self.update(ident, record=None, scope=None, fetching=False, profile=(),
                           local_dir=None, doomed_dir=row.local_dir,
                           fuse_unused_since=-math.inf if row.view is not None else None)

    def drop_if_done(self, ident: str) -> None:
        """Forget a released layer once nothing is left to sweep of it."""
        row = self._rows.get(ident)
        if row is not None and row.released and not row.has_leftovers and row.view is None:
            del self._rows[ident]

    def __iter__(self) -> Iterator[LayerState]:
        return iter(sorted(self._rows.values(), key=lambda r: r.ident))

    def live_rows(self) -> list[LayerState]:
        return [r for r in self if not r.released]



@dataclass(frozen=True, slots=True)
class LayerStatus:
    """One lazy layer as ``snapfs status`` shows it."""

    layer_id: str
    digest: str
    ref: str
    format: str
    state: str  # "lazy" | "fetching" | "local" (local = materialised, on the hot path)
    total_bytes: int  # sum of the layer's regular-file sizes (uncompressed)
    local_bytes: int  # of those, bytes whose chunks are in the cache
    stats: FetchStats  # requests, bytes_fetched, cache_hits, … (snapfs/lazy/fetcher.py)
    path: str  # current lowerdir: the FUSE dir or the materialised dir
    # The last read that failed, naming registry, repository and blob ("" if none).
    last_error: str = ""


def layer_status(table: LayerTable, path_of: Callable[[str], Path]) -> list[LayerStatus]:
    """The live layers of ``table`` (``path_of``: a layer's FUSE directory) for status."""
    out = []
    for row in table.live_rows():
        assert row.record is not None
        state = row.state
        if state == "local" or row.view is None:
            total, have, path = row.total_bytes, row.total_bytes, str(row.local_dir or "")
        else:
            total, have = row.view.fetcher.total_bytes, row.view.fetcher.local_bytes()
            path = str(path_of(row.ident))
        error = row.broken or (row.view.last_error if row.view is not None else "")
        out.append(LayerStatus(row.ident, str(row.record.digest), row.record.ref,
                               row.record.format, state, total, have, row.stats, path, error))
    return out


__all__ = ["STATES", "LayerState", "LayerStatus", "LayerTable", "State", "layer_status"]
