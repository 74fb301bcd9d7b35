"""Opening lazy layers from the config: ``[fetch]`` options, the layer set's lifetime, and the
snapshotter the daemon and the embedded engine both use. The layer records and the snapshot
records share one handle on ``<root>/metadata.lmdb`` (content.metadata), so one transaction
can hold a snapshot and its layer.

``[fetch]`` keys (all optional)::

    [fetch]
    prepare_timeout = 30          # seconds a Prepare waits for the registry
    concurrency = 8               # on-demand and startup Range requests in flight
    background = true             # fetch whole layers in the background, verify them
                                  # (blob digest, diffID) and materialise them (hot path)
    background_rate = 0           # bytes/s (integer or "50MB", "1.5MiB"); 0 = unlimited
    background_concurrency = 2    # background pieces (1 MiB) in flight
    background_pause = 0.3        # for background_hold seconds after a layer is mounted,
    background_hold = 5           # background pieces wait for this long a pause in the
                                  # on-demand reads (a starting program reads in a chain);
                                  # later they go out beside them (a bulk reader)
    window = 262144               # compressed bytes of neighbouring chunks a miss fetches
                                  # along (then adapted to what is read); 0 = off
    release_interval = 10         # seconds between looks for unused FUSE directories (and
                                  # the least time one stays after its layer is materialised)
    read_timeout = 60             # seconds a read through the FUSE server waits for a daemon
                                  # (one that is restarting) before it fails with EIO

    [fuse]
    server = true                 # the daemon serves FUSE from ``snapfs fuse-server``, a
                                  # process that survives the daemon's restarts; false: in
                                  # the daemon itself (a restart breaks lazy containers)

    [verify]
    toc = "require"               # a lazy layer's TOC must match the digest its manifest
                                  # declares; layers declaring none are unpacked natively.
                                  # "warn": mount those lazily anyway, with a warning
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from content.chunkcache import ChunkCache
from content.digest import Digest
from content.errors import InvalidArgument, NotFound
from content.metadata import MetadataDB
from snapfs.config import Config
from snapfs.errors import single_errors
from snapfs.fuse import LayerFS
from snapfs.lazy.fuse_client import RemoteMount, serve_fetches, server_argv
from snapfs.lazy.fuse_server import FETCH
from snapfs.lazy.layerdb import LayerDB
from snapfs.lazy.layers import LayerSource, LazyLayers
from snapfs.lazy.schedule import FetchOptions, parse_rate
from snapfs.lazy.trust import TOC_POLICIES, TocPolicy
from snapfs.snapshot.mounts import detect_overlay_features
from snapfs.snapshot.snapshotter import Snapshotter, open_snapshotter


def _positive(section: Any, key: str, default: float, kind: type) -> Any:
    value = section.get(key, default)
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value <= 0:
        want = "a positive integer" if kind is int else "a positive number"
        raise InvalidArgument(f"config [fetch] {key}: want {want}, got {value!r}")
    return kind(value)


def _non_negative(section: Any, key: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidArgument(f"config [fetch] {key}: want a number >= 0, got {value!r}")
    return float(value)


def fetch_options(config: Config) -> FetchOptions:
    """The ``[fetch]`` section of ``config``, checked."""
    section = config.sections.get("fetch", {})
    d = FetchOptions()
    background = section.get("background", d.background)
    if not isinstance(background, bool):
        raise InvalidArgument(f"config [fetch] background: want true or false, got "
                              f"{background!r}")
    return FetchOptions(
        prepare_timeout=_positive(section, "prepare_timeout", d.prepare_timeout, float),
        concurrency=_positive(section, "concurrency", d.concurrency, int),
        background=background,
        background_rate=parse_rate(section.get("background_rate", d.background_rate),
                                   "config [fetch] background_rate"),
        background_concurrency=_positive(section, "background_concurrency",
                                         d.background_concurrency, int),
        release_interval=_positive(section, "release_interval", d.release_interval, float),
        background_pause=_non_negative(section, "background_pause", d.background_pause),
        background_hold=_non_negative(section, "background_hold", d.background_hold),
        window=parse_rate(section.get("window", d.window), "config [fetch] window"),
    )


@dataclass(frozen=True, slots=True)
class FuseServerSpawn:
    """How lazy layers reach ``snapfs fuse-server``: its state dir and command line."""

    state: Path
    argv: list[str]


def fuse_server_spawn(config: Config) -> FuseServerSpawn | None:
    """``[fuse] server`` (default on) for a daemon on ``config``; None: serve inline."""
    server = config.sections.get("fuse", {}).get("server", True)
    if not isinstance(server, bool):
        raise InvalidArgument(f"config [fuse] server: want true or false, got {server!r}")
    if not server:
        return None
    fetch = config.sections.get("fetch", {})
    timeout = _positive(fetch, "read_timeout", 60.0, float)
    options = fetch_options(config)
    return FuseServerSpawn(config.state, server_argv(
        config.root.absolute(), config.state.absolute(), read_timeout=timeout,
        concurrency=options.concurrency, window=options.window, log_level=config.debug.level))


def toc_policy(config: Config) -> TocPolicy:
    """``[verify] toc``, checked."""
    value = config.sections.get("verify", {}).get("toc", "require")
    for policy in TOC_POLICIES:
        if value == policy:
            return policy
    raise InvalidArgument(f"config [verify] toc: want one of {', '.join(TOC_POLICIES)}, "
                          f"got {value!r}")


@asynccontextmanager
async def open_lazy_layers(root: Path, source: LayerSource, *,
                           options: FetchOptions | None = None, userxattr: bool = False,
                           toc: TocPolicy = "require",
                           metadata: MetadataDB | None = None,
                           fuse_server: FuseServerSpawn | None = None,
                           ) -> AsyncIterator[LazyLayers]:
    """The lazy layers of ``root``, recorded ones restored (which serves ``<root>/fuse`` if
    any is still lazy). On exit, background fetches and materialisations stop (a half-built
    directory is discarded and rebuilt next time) and the mount, once served here, is
    unmounted. With ``fuse_server``, a ``snapfs fuse-server`` serves the mount instead (and
    keeps serving it after this exits); this process answers its range requests on
    ``<state>/fetch.sock``. ``metadata``: the root's handle (by default one of its own)."""
    if metadata is not None:
        db = await trio.to_thread.run_sync(LayerDB, metadata)
    else:
        db = await trio.to_thread.run_sync(LayerDB.open, root)
    try:
        cache = ChunkCache(root / "chunks")
        await trio.to_thread.run_sync(cache.sweep_temp)
        fs = LayerFS(root / "fuse")
        with single_errors():
            async with trio.open_nursery() as nursery:
                remote = None if fuse_server is None else RemoteMount(
                    root, fuse_server.state, nursery=nursery, server_argv=fuse_server.argv,
                    userxattr=userxattr)
                lazy = LazyLayers(source, fs, db, cache, nursery=nursery, options=options,
                                  userxattr=userxattr, layers_dir=root / "layers",
                                  toc_policy=toc, mount=remote)
                if remote is not None and fuse_server is not None:
                    remote.on_lost = lazy.server_lost
                    # Before restore: running containers' reads are waiting for it.
                    await nursery.start(serve_fetches, lazy.scheduler,
                                        fuse_server.state / FETCH,
                                        lambda blob, n: _count_demand(lazy, blob, n))
                try:
                    await lazy.restore()
                    await nursery.start(lazy.serve_sweeps)
                    yield lazy
                finally:
                    lazy.stop.set()
                    nursery.cancel_scope.cancel()
    finally:
        db.close()


def _count_demand(lazy: LazyLayers, blob: Digest, nbytes: int) -> None:
    """A range the FUSE server fetched for a read counts as the layer's demand."""
    with contextlib.suppress(NotFound):
        lazy.fetcher(blob).count("demand", 1, nbytes)


@asynccontextmanager
async def open_lazy_snapshotter(config: Config, source: LayerSource, *,
                                metadata: MetadataDB | None = None,
                                fuse_server: FuseServerSpawn | None = None,
                                ) -> AsyncIterator[Snapshotter]:
    """The snapshotter on ``config.root`` with lazy layers (FUSE at ``<root>/fuse``) when
    this process can serve them, natively only otherwise. The daemon and the embedded
    engine both open it; the mount lives exactly as long as the snapshotter. Both use
    ``metadata``, the root's handle (opened here, and migrated if need be, if not given)."""
    options = fetch_options(config)
    userxattr = detect_overlay_features().userxattr
    async with AsyncExitStack() as stack:
        if metadata is None:
            metadata = stack.enter_context(
                await trio.to_thread.run_sync(MetadataDB.open, config.root))
        lazy = await stack.enter_async_context(open_lazy_layers(
            config.root, source, options=options, userxattr=userxattr,
            toc=toc_policy(config), metadata=metadata, fuse_server=fuse_server))
        yield await stack.enter_async_context(
            open_snapshotter(config.root, remote=lazy, metadata=metadata))


__all__ = ["FuseServerSpawn", "fetch_options", "fuse_server_spawn", "open_lazy_layers",
           "open_lazy_snapshotter"]
