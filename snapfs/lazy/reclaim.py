"""What lazy layers give back to the disk: chunks no lazy layer needs and layer directories
no layer record names.

The chunk cache holds the verified chunks of layers that are still lazy; a layer that was
materialised dropped its own (``Lifecycle._drop_chunks``), but a layer that was released
(containerd's GC, ``snapfs rmi``) leaves its chunks behind, and a crash may leave a
half-built ``new-<id>`` or half-deleted ``rm-<id>`` directory under ``<root>/layers``. The
plan is pure (:func:`needed_chunks`, :func:`stray_names`); the I/O is blocking (a worker
thread). Removing a chunk a reader still wanted is never wrong, only slower — the fetcher
fetches and verifies it again — but the plan keeps every chunk of every layer that is still
lazy, so a container reading one loses nothing. A directory any mount uses stays.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from content.chunkcache import ChunkCache
from content.digest import Digest
from snapfs.lazy.in_use import dir_in_use
from snapfs.lazy.state import LayerTable
from snapfs.snapshot.usage import disk_usage


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What one collection removed."""

    chunks: int = 0
    chunk_bytes: int = 0
    dirs: int = 0
    dir_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.chunk_bytes + self.dir_bytes


def needed_chunks(table: LayerTable) -> set[Digest]:
    """Every chunk of every live layer that is still lazy (pure)."""
    return {c.digest for row in table.live_rows()
            if row.view is not None and row.local_dir is None
            for cs in row.view.layer.files.values() for c in cs}


def stray_names(present: Iterable[str], recorded: Iterable[str], local: Iterable[str],
                table: LayerTable) -> list[str]:
    """Entries of ``<root>/layers`` nothing names (pure). Kept: the materialised directory
    of every layer record (``local``), one waiting in this process's table for its users,
    and ``new-<id>`` of every recorded layer (its completion may be running, here or in
    another process)."""
    keep = set(local)
    building = set(recorded)  # new-<id>-<pid>-<random>: see snapfs.lazy.complete
    for row in table:
        for path in (row.local_dir, row.doomed_dir):
            if path is not None:
                keep.add(path.name)
        building.add(row.ident)
    return sorted(name for name in present if name not in keep
                  and not any(name == f"new-{b}" or name.startswith(f"new-{b}-")
                              for b in building))


def remove_chunks(cache: ChunkCache, needed: set[Digest]) -> tuple[int, int]:
    """Delete the cached chunks not in ``needed``: (chunks, bytes) removed. Blocking."""
    count = size = 0
    for digest, n in cache.digests():
        if digest not in needed and cache.remove(digest):
            count += 1
            size += n
    return count, size


def remove_stray(layers_dir: Path, names: Iterable[str]) -> tuple[int, int]:
    """Delete those directories of ``layers_dir`` that no mount uses: (dirs, bytes).
    Blocking."""
    count = size = 0
    for name in names:
        path = layers_dir / name
        if not path.is_dir() or dir_in_use(path):
            continue
        size += disk_usage(path).size
        shutil.rmtree(path, ignore_errors=True)
        count += 1
    return count, size


def list_names(layers_dir: Path) -> list[str]:
    try:
        return [p.name for p in layers_dir.iterdir()]
    except FileNotFoundError:
        return []


__all__ = ["Reclaimed", "list_names", "needed_chunks", "remove_chunks", "remove_stray",
           "stray_names"]
