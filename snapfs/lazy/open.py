"""Opening lazy layers from the config: ``[fetch]`` options, the layer set's lifetime, and the
snapshotter the daemon and the embedded engine both use. The layer records and the snapshot
records share one handle on ``<root>/metadata.lmdb`` (content.metadata), so one transaction
can hold a snapshot and its layer.

``[fetch]`` keys (all optional; their types and checks are snapfs.config's schema)::

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
    lazy = "auto"                 # "required": a layer that could be lazy fails its Prepare
                                  # when FUSE cannot be served, instead of a full pull
    read_timeout = 60             # seconds one lazy read may wait for the registry (or,
                                  # through the FUSE server, a restarting daemon); then EIO
                                  # for that read, and the next one tries again

    [fuse]
    server = true                 # the daemon serves FUSE from ``snapfs fuse-server``, a
                                  # process that survives the daemon's restarts; false: in
                                  # the daemon itself (a restart breaks lazy containers)

    [cache]
    max_size = 0                  # the chunk cache's bound: bytes ("20GB", "512MiB") or a
                                  # share of its filesystem ("10%"); 0 = unbounded. The
                                  # least recently used chunks go first (fetched again when
                                  # read again)
    min_free = 0                  # bytes or "5%": evict chunks to keep this much free

    [verify]
    toc = "require"               # a lazy layer's TOC must match the digest its manifest
                                  # declares; layers declaring none are unpacked natively.
                                  # "warn": mount those lazily anyway, with a warning
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from content.chunkbudget import Limits
from content.chunkcache import ChunkCache
from content.digest import Digest
from content.errors import ContentError, InvalidArgument, NotFound
from content.metadata import MetadataDB
from snapfs.config import Config
from snapfs.errors import single_errors
from snapfs.fuse import LayerFS
from snapfs.lazy.fuse_client import RemoteMount, serve_fetches, server_argv
from snapfs.lazy.fuse_server import FETCH
from snapfs.lazy.layerdb import LayerDB
from snapfs.lazy.layers import LayerSource, LazyLayers
from snapfs.lazy.profiles import open_profiles, profile_options
from snapfs.lazy.schedule import FetchOptions
from snapfs.lazy.trust import TOC_POLICIES, TocPolicy
from snapfs.snapshot.mounts import detect_overlay_features
from snapfs.snapshot.snapshotter import Snapshotter, open_snapshotter
from snapfs.sys.units import parse_rate


def fetch_options(config: Config) -> FetchOptions:
    """The ``[fetch]`` section of ``config`` (checked by snapfs.config as it was read)."""
    f = config.fetch
    return FetchOptions(
        prepare_timeout=f.prepare_timeout, concurrency=f.concurrency, background=f.background,
        background_rate=parse_rate(f.background_rate, "config [fetch] background_rate"),
        background_concurrency=f.background_concurrency, release_interval=f.release_interval,
        window=parse_rate(f.window, "config [fetch] window"),
        lazy_required=f.lazy == "required", background_pause=f.background_pause,
        background_hold=f.background_hold, read_timeout=f.read_timeout,
    )


def _bytes_or_share(value: object, total: int, what: str) -> int:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1])
        except ValueError:
            share = -1.0
        if not 0 <= share <= 100:
            raise InvalidArgument(f"{what}: want a percentage from 0% to 100%, got {value!r}")
        return int(total * share / 100)
    return parse_rate(value, what)


def cache_limits(config: Config) -> Limits:
    """``[cache] max_size`` and ``min_free`` in bytes (a percentage is of the filesystem
    holding ``<root>/chunks``)."""
    c = config.cache
    total = 0
    if any(isinstance(v, str) and "%" in v for v in (c.max_size, c.min_free)):
        st = os.statvfs(config.root if config.root.exists() else "/")
        total = st.f_blocks * st.f_frsize
    return Limits(
        max_bytes=_bytes_or_share(c.max_size, total, "config [cache] max_size"),
        min_free=_bytes_or_share(c.min_free, total, "config [cache] min_free"))


@dataclass(frozen=True, slots=True)
class FuseServerSpawn:
    """How lazy layers reach ``snapfs fuse-server``: its state dir and command line, and
    where this process answers its range requests (None: ``<state>/fetch.sock``, the
    daemon's; a daemon-less command names a socket of its own) and where the server's output
    goes (None: this process's stdout and stderr, e.g. the daemon's journal). ``standby``:
    started as this process opens its layers, not at the first lazy Prepare (the daemon)."""

    state: Path
    argv: list[str]
    fetch: Path | None = None
    log: Path | None = None
    standby: bool = False


def fuse_server_spawn(config: Config, *, standby: bool = False) -> FuseServerSpawn | None:
    """``[fuse] server`` (default on) for a daemon on ``config``; None: serve inline."""
    if not config.fuse.server:
        return None
    options = fetch_options(config)
    return FuseServerSpawn(config.state, server_argv(
        config.root.absolute(), config.state.absolute(), read_timeout=config.fetch.read_timeout,
        concurrency=options.concurrency, window=options.window, log_level=config.debug.level,
        limits=cache_limits(config)), standby=standby)


def toc_policy(config: Config) -> TocPolicy:
    """``[verify] toc`` (checked by snapfs.config as it was read)."""
    for policy in TOC_POLICIES:
        if config.verify.toc == policy:
            return policy
    raise InvalidArgument(f"config [verify] toc: want one of {', '.join(TOC_POLICIES)}, "
                          f"got {config.verify.toc!r}")


@asynccontextmanager
async def open_lazy_layers(root: Path, source: LayerSource, *,
                           options: FetchOptions | None = None, userxattr: bool = False,
                           toc: TocPolicy = "require", metadata: MetadataDB | None = None,
                           limits: Limits | None = None,
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
        cache = ChunkCache(root / "chunks", limits=limits)
        await trio.to_thread.run_sync(cache.sweep_temp)
        fs = LayerFS(root / "fuse")
        with single_errors():
            async with trio.open_nursery() as nursery:
                remote = None if fuse_server is None else RemoteMount(
                    root, fuse_server.state, nursery=nursery, server_argv=fuse_server.argv,
                    userxattr=userxattr, required=options is not None and options.lazy_required,
                    fetch=fuse_server.fetch, log=fuse_server.log)
                lazy = LazyLayers(source, fs, db, cache, nursery=nursery, options=options,
                                  userxattr=userxattr, layers_dir=root / "layers",
                                  toc_policy=toc, mount=remote)
                if remote is not None and fuse_server is not None:
                    remote.on_lost = lazy.server_lost
                    remote.on_drained = lazy.server_draining
                    # Before restore: running containers' reads are waiting for it.
                    await nursery.start(serve_fetches, lazy.scheduler,
                                        fuse_server.fetch or fuse_server.state / FETCH,
                                        lambda blob, n: _count_demand(lazy, blob, n))
                try:
                    await lazy.restore()
                    await nursery.start(lazy.serve_sweeps)
                    if remote is not None and fuse_server is not None and fuse_server.standby:
                        nursery.start_soon(_standby, remote)
                    yield lazy
                finally:
                    lazy.stop.set()
                    if remote is not None:
                        with trio.move_on_after(5, shield=True):
                            await remote.close_if_idle()
                    nursery.cancel_scope.cancel()
                    with trio.move_on_after(5, shield=True), contextlib.suppress(
                            ContentError, OSError):
                        # Counters outlive this process (snapfs status, df without it).
                        await lazy.lifecycle.flush_counts()
    finally:
        db.close()


async def _standby(remote: RemoteMount) -> None:
    """The daemon's FUSE server, started before any Prepare needs it: a Python process takes
    ~0.45 s to start, which the first lazy pull otherwise waits for. It costs an empty mount
    while the daemon runs; one that never served a layer exits with the daemon
    (``close_if_idle``, or its own idle watch when the daemon was killed or stopped before
    it answered). Failing here is said by the first lazy Prepare, which tries again."""
    with contextlib.suppress(ContentError, OSError):
        await remote.ensure_served()


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
            toc=toc_policy(config), metadata=metadata, limits=cache_limits(config),
            fuse_server=fuse_server))
        # Startup profiles (snapfs.lazy.profiles): closed before the layers, so that a
        # recording in flight is stored while its layers are still served.
        profiles = await stack.enter_async_context(
            open_profiles(lazy, config.root, profile_options(config)))
        yield await stack.enter_async_context(
            open_snapshotter(config.root, remote=lazy, metadata=metadata, observer=profiles))


__all__ = ["FuseServerSpawn", "cache_limits", "fetch_options", "fuse_server_spawn",
           "open_lazy_layers", "open_lazy_snapshotter"]
