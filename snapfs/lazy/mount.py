"""Where lazy layers are served: the seam between the layer registry and a FUSE mount.

:class:`LayerMount` is what ``LazyLayers`` and ``Lifecycle`` need of the mount; two
implementations:

- :class:`InlineMount` — this process serves ``<root>/fuse`` itself (``snapfs.fuse``),
  started on first need; the embedded engine uses it, and reads run in this process;
- ``snapfs.lazy.fuse_client.RemoteMount`` — a separate, long-lived ``snapfs fuse-server``
  serves it and asks this process for missing blob ranges, so the daemon can restart
  without the mount (``snapfs serve``).

Must not decide when layers come and go (``snapfs.lazy.layers`` and ``lifecycle`` do).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from snapfs.fuse import LayerFS, LayerStats
from snapfs.fuse.inodes import Access
from snapfs.fuse.supervisor import FuseSupervisor
from snapfs.lazy.layerdb import LayerRecord
from snapfs.lazy.view import LazyLayerView

# Ends a recording and returns what it saw: regular files opened or read, first access each.
StopRecording = Callable[[], Awaitable[list[Access]]]


class LayerMount(Protocol):
    """The FUSE mount lazy layers are added to."""

    @property
    def mountpoint(self) -> Path:
        """The mount's name in records: lazy snapshots' lowers are ``<mountpoint>/<id>``."""
        ...

    def path_of(self, layer_id: str) -> Path:
        """Where the layer's directory is served now: under :attr:`mountpoint`, or, after a
        FUSE server upgrade, under the mountpoint of the server serving it."""
        ...

    @property
    def served(self) -> bool:
        """Whether the mount is served now (by this process or a FUSE server)."""
        ...

    async def ensure_served(self) -> bool:
        """Serve the mount if it is not served yet; False if it cannot be."""
        ...

    @property
    def previous_died(self) -> bool:
        """Whether, when :meth:`ensure_served` started serving, it found the mount left
        stale by a server that died (so layers recorded as lazy were lost with it)."""
        ...

    async def add_layer(self, view: LazyLayerView, rec: LayerRecord,
                        ranges: Mapping[int, bytes]) -> None:
        """Expose ``view`` as ``<mountpoint>/<layer_id>``; ``rec`` and ``ranges`` (the
        verified index's bytes) let another process rebuild the same view."""
        ...

    async def preload(self, rec: LayerRecord, ranges: Mapping[int, bytes]) -> bool:
        """Let the process serving the mount index ``rec`` from ``ranges`` (not yet checked
        here: it checks them against ``rec.toc_digest`` itself) while this one does, ahead
        of :meth:`add_layer`; whether it did (then :meth:`remove_layer` undoes it)."""
        ...

    async def update_layer(self, view: LazyLayerView) -> None:
        """``view.local_dir`` or ``view.broken`` changed: reads must follow."""
        ...

    async def remove_layer(self, layer_id: str) -> None: ...

    def layer_ids(self) -> list[str]: ...

    def stats(self, layer_id: str) -> LayerStats:
        """The layer's FUSE counters (NotFound when it is not on the mount)."""
        ...

    async def refresh(self) -> None:
        """Bring :meth:`stats` up to date (a remote server's counters)."""
        ...

    def last_error(self, layer_id: str) -> str:
        """The layer's last failed read where another process serves it ("" if none)."""
        ...

    def take_evictions(self) -> dict[str, int]:
        """Chunk-cache evictions another process serving the mount counted since the last
        call (``snapfs.lazy.counters.eviction_counts`` names); {} when served here."""
        ...

    def take_window_counts(self) -> dict[str, tuple[int, int]]:
        """Per layer, the (window_chunks, window_hits) another process's reads added since
        the last call (the locality window runs where reads run); {} when served here."""
        ...

    async def record(self, layers: Sequence[str]) -> StopRecording:
        """Record accesses to ``layers`` from now until the returned function is awaited."""
        ...


class InlineMount:
    """:class:`LayerMount` served by this process (``FuseSupervisor``)."""

    def __init__(self, fs: LayerFS, supervisor: FuseSupervisor) -> None:
        self.fs = fs
        self._supervisor = supervisor

    @property
    def mountpoint(self) -> Path:
        return self.fs.mountpoint

    def path_of(self, layer_id: str) -> Path:
        return self.fs.mountpoint / layer_id

    @property
    def served(self) -> bool:
        return self._supervisor.served

    async def ensure_served(self) -> bool:
        return await self._supervisor.ensure_served()

    @property
    def previous_died(self) -> bool:
        return False  # this process's own mount: a stale one held nothing of ours

    async def preload(self, rec: LayerRecord, ranges: Mapping[int, bytes]) -> bool:
        return False  # the view this process builds is the one it serves

    async def add_layer(self, view: LazyLayerView, rec: LayerRecord,
                        ranges: Mapping[int, bytes]) -> None:
        self.fs.add_layer(view)

    async def update_layer(self, view: LazyLayerView) -> None:
        pass  # the mount reads this very view object

    async def remove_layer(self, layer_id: str) -> None:
        await self.fs.remove_layer(layer_id)

    def layer_ids(self) -> list[str]:
        return self.fs.layer_ids()

    def stats(self, layer_id: str) -> LayerStats:
        return self.fs.stats(layer_id)

    async def refresh(self) -> None:
        pass

    def last_error(self, layer_id: str) -> str:
        return ""  # reads run here: the view itself keeps it

    def take_evictions(self) -> dict[str, int]:
        return {}  # this process's cache counts its own

    def take_window_counts(self) -> dict[str, tuple[int, int]]:
        return {}  # this process's fetchers count their own

    async def record(self, layers: Sequence[str]) -> StopRecording:
        recorder = self.fs.start_recording(layers)

        async def stop() -> list[Access]:
            return self.fs.stop_recording(recorder)

        return stop


__all__ = ["InlineMount", "LayerMount", "StopRecording"]
