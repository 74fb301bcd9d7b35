"""The snapfs daemon: snapshotter (with the FUSE mount of lazy layers), metrics endpoint,
gRPC socket and, with ``[cri] enable``, the CRI image-service proxy, started in that order.

``serve_daemon`` first takes the pid files of its root, state dir and socket (a second
daemon on any of them refuses to start, naming the holder, before it touches anything), runs
until cancelled and then stops in reverse: the gRPC server stops accepting calls and lets
in-flight ones finish, the metrics endpoint closes, and only then is the snapshotter closed.
``run_daemon`` adds SIGTERM/SIGINT handling for ``snapfs serve`` and tells a service manager
(``$NOTIFY_SOCKET``) ``READY=1`` once the gRPC socket accepts connections, ``STOPPING=1``
when a signal starts the shutdown.

Must not hold snapshot, layer or protocol logic: it opens the parts and starts them in
order.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn

import trio

from content.credentials import CredentialSource, DockerConfig
from content.keychain import FirstOf, Keychain
from content.registry import open_registry
from snapfs.client.reports import gather_reports
from snapfs.client.status import status_socket
from snapfs.config import Config
from snapfs.daemon.cri_proxy import serve_cri_proxy
from snapfs.daemon.grpc_server import TrioPortal, serve_grpc
from snapfs.daemon.metrics import DiskStats, Metrics, count_by_kind, serve_metrics
from snapfs.daemon.snapshots_service import SnapshotsServicer
from snapfs.daemon.status_server import serve_status
from snapfs.errors import ContentError, FailedPrecondition
from snapfs.lazy.layers import LazyLayers
from snapfs.lazy.open import fuse_server_spawn, open_lazy_snapshotter
from snapfs.snapshot.snapshotter import Snapshotter
from snapfs.snapshot.types import Snapshots
from snapfs.sys.notify import READY, STOPPING, sd_notify
from snapfs.sys.pidfile import AlreadyLocked, lock_pidfiles

log = logging.getLogger(__name__)

PIDFILE = "snapfs.pid"

# The daemon decides where registry credentials come from (config.json, and kubelet's first
# when the CRI proxy runs); the opener hands them to its registry client.
OpenSnapshots = Callable[[Config, CredentialSource],
                         AbstractAsyncContextManager[Snapshots]]


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What a started daemon reports: where it listens."""

    socket: Path
    metrics: tuple[str, int] | None  # (host, port) of /metrics, None when off


@asynccontextmanager
async def open_default_snapshotter(config: Config,
                                   credentials: CredentialSource) -> AsyncIterator[Snapshots]:
    """The ``Snapshotter`` on ``config.root``, with lazy layers: the FUSE mount at
    ``<root>/fuse`` is served by ``snapfs fuse-server`` (started if none runs; ``[fuse]
    server = false``: by this process), and every recorded lazy layer re-added to it (or
    reconciled with what the server still serves) before this yields, i.e. before the gRPC
    socket accepts a call. The server outlives the daemon: running containers keep reading
    across a restart. Without FUSE access the daemon serves native snapshots only (logged)."""
    async with (
        open_registry(hosts_dir=config.registry.hosts_dir(), credentials=credentials,
                      timeout=config.registry.read_timeout,
                      connect_timeout=config.registry.connect_timeout) as registry,
        # The FUSE server starts beside the daemon, ready before the first lazy Prepare.
        open_lazy_snapshotter(config, registry,
                              fuse_server=fuse_server_spawn(config, standby=True)) as sn,
    ):
        yield sn


def _prepare_dirs(config: Config) -> None:
    # Snapshot contents must not be browsable by other users (containerd uses 0700 too).
    config.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.state.mkdir(parents=True, exist_ok=True, mode=0o711)
    config.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o711)


def pidfiles(config: Config) -> list[Path]:
    """What one daemon holds: its root, its state dir (the status socket lives there) and,
    when the gRPC socket is elsewhere, ``<socket>.pid`` beside it."""
    paths = [config.root / PIDFILE, config.state / PIDFILE]
    if config.socket.parent.absolute() != config.state.absolute():
        paths.append(config.socket.with_name(config.socket.name + ".pid"))
    return paths


async def serve_daemon(
    config: Config,
    *,
    open_snapshots: OpenSnapshots = open_default_snapshotter,
    task_status: trio.TaskStatus[DaemonStatus] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run the daemon described by ``config`` until cancelled; reports a ``DaemonStatus``."""
    await trio.to_thread.run_sync(_prepare_dirs, config)
    try:
        held = lock_pidfiles(pidfiles(config))
    except AlreadyLocked as exc:
        raise FailedPrecondition(
            f"another snapfs daemon (pid {exc.pid or 'unknown'}) holds {exc.path}; "
            "not starting") from None
    with held:
        await _serve(config, open_snapshots, task_status)


async def _serve(config: Config, open_snapshots: OpenSnapshots,
                 task_status: trio.TaskStatus[DaemonStatus]) -> NoReturn:
    keychain = Keychain() if config.cri.enable else None
    config_json = DockerConfig(config.registry.docker_config_path())
    credentials = FirstOf(keychain, config_json) if keychain is not None else config_json
    async with open_snapshots(config, credentials) as sn:
        log.info("snapshotter open on %s", config.root)
        portal = TrioPortal()
        metrics = Metrics()
        metrics.track_snapshots(lambda: count_by_kind(portal.run(sn.list)))
        remote = sn.remote if isinstance(sn, Snapshotter) else None
        lazy = remote if isinstance(remote, LazyLayers) else None
        if lazy is not None:
            # Scraped from the metrics thread; the layers live on this loop.
            metrics.track_layers(lambda: portal.run(partial(gather_reports, lazy)))
            metrics.track_disk(partial(disk_stats, lazy))
        async with trio.open_nursery() as nursery:
            metrics_at: tuple[str, int] | None = None
            if config.metrics.address:
                metrics_at = await nursery.start(serve_metrics, metrics, config.metrics.address)
            if lazy is not None:
                # ``snapfs status`` and profile recording read this process's lazy layers.
                await nursery.start(serve_status, lazy, status_socket(config.state))
            servicer = SnapshotsServicer(sn, portal, metrics)
            sock: Path = await nursery.start(
                partial(serve_grpc, servicer, str(config.socket), portal=portal)
            )
            log.info("serving on %s", sock)
            if keychain is not None:
                cri: Path = await nursery.start(partial(
                    serve_cri_proxy, config.cri_socket, config.cri.upstream, keychain))
                log.info("cri image service proxy on %s", cri)
            task_status.started(DaemonStatus(socket=sock, metrics=metrics_at))
            await trio.sleep_forever()
    raise AssertionError("unreachable")


def disk_stats(lazy: LazyLayers) -> DiskStats:
    """The chunk cache and GC numbers of ``lazy`` (from the metrics thread: plain counters
    and a walk of the cache directory, never the FUSE mount)."""
    ev = lazy.cache.evictions()
    return DiskStats(lazy.cache.used_bytes(), lazy.cache.limits.max_bytes, ev.chunks, ev.bytes,
                     lazy.lifecycle.gc_runs, lazy.lifecycle.gc_freed_bytes)


async def run_daemon(
    config: Config, *, open_snapshots: OpenSnapshots = open_default_snapshotter
) -> None:
    """``serve_daemon`` until SIGTERM or SIGINT, then a graceful stop. An error before the
    daemon serves leaves as itself (one line from the CLI), not wrapped in a group.

    SIGTERM stays ignored once the receiver closes (it restores the disposition it found):
    a second SIGTERM during the last steps of a stop must not kill the process with
    -SIGTERM after the work is done. Handled signals reset on exec, so children started
    while serving get the default disposition."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:
                status: DaemonStatus = await nursery.start(
                    partial(serve_daemon, config, open_snapshots=open_snapshots))
                # nursery.start returns once the gRPC socket is bound and listening.
                sd_notify(READY, f"STATUS=serving on {status.socket}")
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    break
                sd_notify(STOPPING, "STATUS=stopping")
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaves = group.exceptions
            if len(leaves) == 1 and isinstance(leaves[0], ContentError):
                raise leaves[0] from None
            raise
    log.info("stopped")
