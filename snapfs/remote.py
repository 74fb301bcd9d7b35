"""Remote (lazy) layers: the snapshotter's ``RemoteLayers`` seam, backed by FUSE.

A Prepare carrying ``containerd.io/snapshot.ref`` reaches :meth:`LazyLayers.prepare_remote`:

1. the image reference and layer digest come from the labels — containerd's CRI set
   (``cri.image-ref``, ``cri.layer-digest``) or stargz's (``remote/stargz.reference``,
   ``remote/stargz.digest``); without them the layer is native (None);
2. the blob's size (HEAD), then its tail (a Range request, large enough that a small TOC
   arrives with the footer); ``load_lazy_layer`` decides: None → a plain layer, native;
3. otherwise the layer is recorded in ``layers.lmdb`` (the ranges its index came from), its
   :class:`LazyLayerView` is added to the one FUSE mount at ``<root>/fuse``, and the layer's
   directory is returned for the snapshotter to commit as the snapshot's lowerdir.

Errors, chosen so that containerd (or ``snapfs pull``) reports what went wrong:

- a registry that does not answer within ``timeout`` → Unavailable (never a hang);
  unreachable or 5xx after retries → Unavailable;
- a blob this daemon cannot see (NotFound, Unauthorized: the client may hold credentials we
  lack) → native path, logged;
- a layer that claims to be lazy (its footer parses) but whose TOC is malformed or does not
  verify → InvalidArgument naming the layer and the cause. Falling back to native would hide
  a broken image behind a slow pull, and the same blob fails a stargz-aware client anyway.

At startup (:func:`open_lazy_layers`) every recorded layer is re-indexed from its recorded
ranges (no network) and added to the mount before anything is served, so committed lazy
snapshots' lowerdirs exist again after a restart or a crash.

Nothing on the trio loop that serves FUSE may touch the mount with blocking I/O: the loop
would wait for a reply only it can send. A new layer directory is stat'ed once from a worker
thread, which leaves its entry in the kernel's cache (entries live 24 h) for code that does.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import trio

from content.chunkcache import ChunkCache
from content.digest import Digest, parse_digest
from content.errors import (
    ContentError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from content.lazyformat import LazyLayer, load_lazy_layer
from content.reference import Reference, parse_reference
from snapfs.config import Config
from snapfs.fetcher import DEFAULT_CONCURRENCY, FetchStats, LayerFetcher, RangeSource
from snapfs.fuse import LayerFS, serve_fuse
from snapfs.layerdb import LayerDB, LayerRecord
from snapfs.lazyview import LazyLayerView
from snapfs.mounts import detect_overlay_features
from snapfs.snapshotter import Snapshotter, open_snapshotter

log = logging.getLogger(__name__)

LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
LABEL_CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
LABEL_STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
LABEL_STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
TAIL_SIZE = 64 * 1024  # the first read: footer, and the TOC of a small layer with it
PREPARE_TIMEOUT = 30.0


class LayerSource(RangeSource, Protocol):
    """What lazy layers need of a registry client (``content.registry.Registry``)."""

    async def blob_size(self, ref: Reference, digest: Digest) -> int: ...


def layer_source(labels: Mapping[str, str]) -> tuple[Reference, Digest] | None:
    """The image reference and layer digest a Prepare's labels name, or None (pure)."""
    for ref_label, digest_label in ((LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST),
                                    (LABEL_STARGZ_REFERENCE, LABEL_STARGZ_DIGEST)):
        ref_text, digest_text = labels.get(ref_label), labels.get(digest_label)
        if not ref_text or not digest_text:
            continue
        try:
            return parse_reference(ref_text), parse_digest(digest_text)
        except InvalidArgument as exc:
            log.warning("remote labels %s / %s unusable: %s", ref_label, digest_label, exc)
    return None


def layer_id(digest: Digest) -> str:
    """The layer's directory name under the FUSE mount (short: overlay options are limited)."""
    return digest.hex if digest.algorithm == "sha256" else f"{digest.algorithm}-{digest.hex}"


class _Recorder:
    """A ``read_range`` that remembers what it read, or replays what was remembered."""

    def __init__(self, source: LayerSource | None, ref: Reference, digest: Digest,
                 ranges: dict[int, bytes] | None = None) -> None:
        self._source = source
        self._ref = ref
        self._digest = digest
        self.ranges: dict[int, bytes] = ranges if ranges is not None else {}

    async def __call__(self, offset: int, length: int) -> bytes:
        if self._source is None:
            for start, data in self.ranges.items():
                if start <= offset and offset + length <= start + len(data):
                    return data[offset - start:offset - start + length]
            raise InvalidArgument(f"layer {self._digest.short()}: the record lacks bytes "
                                  f"{offset}+{length} of the blob")
        data = await self._source.fetch_range(self._ref, self._digest, offset, length)
        self.ranges[offset] = data
        return data


class LazyLayers:
    """``snapfs.snapshotter.RemoteLayers`` over one :class:`LayerFS`.

    The FUSE mount is started in ``nursery`` when the first lazy layer needs it (so a root
    with no lazy layers has no mount); with ``nursery=None`` layers are only added to ``fs``
    (unit tests). A process that cannot serve the mount pulls natively.
    """

    def __init__(self, source: LayerSource, fs: LayerFS, db: LayerDB, cache: ChunkCache, *,
                 nursery: trio.Nursery | None = None, timeout: float = PREPARE_TIMEOUT,
                 tail_size: int = TAIL_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
                 userxattr: bool = False) -> None:
        self.source = source
        self.fs = fs
        self.db = db
        self.cache = cache
        self._nursery = nursery
        self._mounted = False
        self._mount_failed = False
        self._mount_lock = trio.Lock()
        self._timeout = timeout
        self._tail_size = tail_size
        self._userxattr = userxattr
        self._limiter = trio.CapacityLimiter(concurrency)
        self._views: dict[str, LazyLayerView] = {}
        self._locks: dict[Digest, trio.Lock] = {}

    def views(self) -> dict[str, LazyLayerView]:
        return dict(self._views)

    def stats(self) -> dict[str, FetchStats]:
        """Fetch counters per mounted layer id."""
        return {i: v.fetcher.stats for i, v in self._views.items()}

    def fetcher(self, digest: Digest) -> LayerFetcher:
        view = self._views.get(layer_id(digest))
        if view is None:
            raise NotFound(f"layer {digest}: not a mounted lazy layer")
        return view.fetcher

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> str | None:
        source = layer_source(labels)
        if source is None:
            return None
        ref, digest = source
        lock = self._locks.setdefault(digest, trio.Lock())
        async with lock:
            existing = self._views.get(layer_id(digest))
            if existing is not None:
                log.info("snapshot %s: layer %s is already mounted lazily", key, digest.short())
                return str(self.fs.mountpoint / existing.layer_id)
            what = f"layer {digest.short()} of {ref}"
            recorder = _Recorder(self.source, ref, digest)
            try:
                with trio.fail_after(self._timeout):
                    size = await self.source.blob_size(ref, digest)
                    layer = await load_lazy_layer(recorder, size, what=what,
                                                  tail_size=self._tail_size)
            except trio.TooSlowError:
                raise Unavailable(f"{what}: the registry did not answer within "
                                  f"{self._timeout:g} s") from None
            except (NotFound, Unauthorized) as exc:
                log.warning("snapshot %s: %s: cannot index it here (%s); unpacking natively",
                            key, what, exc)
                return None
            if layer is None:
                log.info("snapshot %s: %s is not a lazy format; unpacking natively", key, what)
                return None
            if not await self._ensure_mounted():
                return None
            rec = self.db.put(LayerRecord(digest, str(ref), size, layer.format,
                                          layer.toc_digest), recorder.ranges)
            path = await self._add(rec, layer)
            log.info("snapshot %s: %s mounted lazily (%s, %d files) at %s", key, what,
                     layer.format, len(layer.files), path)
            return str(path)

    async def restore(self) -> int:
        """Re-add every recorded layer (from its recorded ranges); returns how many."""
        restored = 0
        records = self.db.all()
        if records and not await self._ensure_mounted():
            log.error("restore: %d lazy layer(s) recorded but %s cannot be served; snapshots "
                      "on them will not mount", len(records), self.fs.mountpoint)
            return 0
        for rec in records:
            if layer_id(rec.digest) in self._views:
                continue
            ref = parse_reference(rec.ref)
            what = f"layer {rec.digest.short()} of {rec.ref}"
            replay = _Recorder(None, ref, rec.digest, self.db.ranges(rec.digest))
            try:
                layer = await load_lazy_layer(replay, rec.size, what=what,
                                              toc_digest=rec.toc_digest,
                                              tail_size=self._tail_size)
                if layer is None:
                    raise InvalidArgument(f"{what}: recorded ranges hold no lazy footer")
                await self._add(rec, layer)
            except ContentError as exc:
                # One bad record must not keep the others (and the daemon) down; snapshots
                # on this layer fail to mount and say so.
                log.error("restore: %s: %s", what, exc)
                continue
            restored += 1
        log.info("restore: %d lazy layer(s) mounted", restored)
        return restored

    async def _ensure_mounted(self) -> bool:
        """Serve the FUSE mount if it is not served yet; False if this process cannot."""
        if self._nursery is None:
            return True
        async with self._mount_lock:
            if self._mounted or self._mount_failed:
                return self._mounted
            mountpoint = self.fs.mountpoint
            if await trio.to_thread.run_sync(_served_elsewhere, mountpoint,
                                             abandon_on_cancel=True):
                log.warning("lazy layers: %s is served by another process; pulling natively "
                            "here", mountpoint)
                self._mount_failed = True
                return False
            try:
                await self._nursery.start(serve_fuse, self.fs, mountpoint)
            except (Unavailable, FailedPrecondition, OSError) as exc:
                log.warning("lazy layers: cannot serve %s (%s); pulling natively", mountpoint,
                            exc)
                self._mount_failed = True
                return False
            self._mounted = True
            return True

    async def _add(self, rec: LayerRecord, layer: LazyLayer) -> Path:
        ident = layer_id(rec.digest)
        fetcher = LayerFetcher(self.source, parse_reference(rec.ref), rec.digest, layer,
                               self.cache, limiter=self._limiter)
        view = LazyLayerView(ident, layer, fetcher, userxattr=self._userxattr)
        path = self.fs.add_layer(view)
        self._views[ident] = view
        if self._mounted:
            # From a thread: the lookup it causes is answered by this loop.
            await trio.to_thread.run_sync(os.stat, path)
        return path


@contextlib.contextmanager
def _single_errors() -> Iterator[None]:
    """A nursery wraps the body's own exception in a group; callers of a context manager
    expect the exception itself (a NotFound from ``snapfs pull`` must stay a NotFound)."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from None


def _served_elsewhere(mountpoint: Path) -> bool:
    """Whether a live FUSE server (another process) answers at ``mountpoint``. statfs always
    reaches the server; a stat may be answered from the kernel's attribute cache even after
    the server died, so a stale mount must not pass for a live one."""
    if not os.path.ismount(mountpoint):
        return False
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False  # stale (ENOTCONN): serve_fuse clears it
    return True


@asynccontextmanager
async def open_lazy_layers(root: Path, source: LayerSource, *,
                           timeout: float = PREPARE_TIMEOUT,
                           concurrency: int = DEFAULT_CONCURRENCY,
                           userxattr: bool = False) -> AsyncIterator[LazyLayers]:
    """The lazy layers of ``root``, recorded ones restored (which serves ``<root>/fuse``);
    the mount, once served, is unmounted on exit."""
    db = await trio.to_thread.run_sync(LayerDB.open, root / "layers.lmdb")
    try:
        cache = ChunkCache(root / "chunks")
        await trio.to_thread.run_sync(cache.sweep_temp)
        fs = LayerFS(root / "fuse")
        with _single_errors():
            async with trio.open_nursery() as nursery:
                try:
                    lazy = LazyLayers(source, fs, db, cache, nursery=nursery, timeout=timeout,
                                      concurrency=concurrency, userxattr=userxattr)
                    await lazy.restore()
                    yield lazy
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        db.close()


def fetch_options(config: Config) -> tuple[float, int]:
    """``[fetch] prepare_timeout`` (seconds) and ``concurrency`` from the config file."""
    section = config.sections.get("fetch", {})
    timeout = section.get("prepare_timeout", PREPARE_TIMEOUT)
    concurrency = section.get("concurrency", DEFAULT_CONCURRENCY)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidArgument(f"config [fetch] prepare_timeout: want a positive number of "
                              f"seconds, got {timeout!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidArgument(f"config [fetch] concurrency: want a positive integer, got "
                              f"{concurrency!r}")
    return float(timeout), concurrency


@asynccontextmanager
async def open_lazy_snapshotter(config: Config,
                                source: LayerSource) -> AsyncIterator[Snapshotter]:
    """The snapshotter on ``config.root`` with lazy layers (FUSE at ``<root>/fuse``) when
    this process can serve them, natively only otherwise. The daemon and the embedded
    engine both open it; the mount lives exactly as long as the snapshotter."""
    timeout, concurrency = fetch_options(config)
    userxattr = detect_overlay_features().userxattr
    async with (
        open_lazy_layers(config.root, source, timeout=timeout, concurrency=concurrency,
                         userxattr=userxattr) as lazy,
        open_snapshotter(config.root, remote=lazy) as sn,
    ):
        yield sn


__all__ = ["LayerSource", "LazyLayers", "fetch_options", "layer_id", "layer_source",
           "open_lazy_layers", "open_lazy_snapshotter"]
