"""What a snapfs command works with: the content store, the image table, a registry client and
a ``Snapshots`` implementation — the daemon's, through its socket, when one is serving, else
an in-process snapshotter on the same root for the life of the command (its lazy layers
served by the state dir's ``snapfs fuse-server``, shared by all commands, so ``snapfs
pull``/``run`` pull lazily without a daemon, any number at once: ``snapfs.app.fuseshare``).
The stores of this process share one handle on ``<root>/metadata.lmdb`` (content.metadata),
opened (and migrated from the previous layout, if need be) first; a daemon opens the same
environment.

Both modes give the same results: the CLI never cares which one it got. Without root (in a
user namespace, see ``snapfs.cli._rootless``) only the embedded mode can work: mounts belong to the
process's own mount namespace.

Must not pull, run or print: it opens the parts commands work on and closes them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from content.errors import FailedPrecondition, Unavailable
from content.metadata import MetadataDB
from content.registry import Registry, open_registry
from content.store import ContentStore
from snapfs.app.containers import cleanup_stale_containers
from snapfs.app.fuseshare import command_fuse_server
from snapfs.app.images import ImageStore
from snapfs.app.pull import remove_interrupted_pulls
from snapfs.client.snapshots import open_client
from snapfs.config import Config
from snapfs.lazy.layers import LazyLayers
from snapfs.lazy.open import open_lazy_snapshotter
from snapfs.snapshot.scoped import CLIENT_SCOPE
from snapfs.snapshot.types import Snapshots
from snapfs.sys.userns import in_user_namespace

log = logging.getLogger(__name__)

Mode = Literal["embedded", "daemon"]


@dataclass(frozen=True, slots=True)
class Engine:
    config: Config
    store: ContentStore
    images: ImageStore
    registry: Registry
    snapshots: Snapshots
    mode: Mode
    lazy: LazyLayers | None = None  # embedded mode: this process's lazy layers (FUSE)

    @property
    def containers_dir(self) -> Path:
        return self.config.state / "containers"

    @property
    def runc_root(self) -> Path:
        return self.config.state / "runc"


async def daemon_alive(config: Config) -> bool:
    """Whether a daemon answers on the configured socket (a stale socket file does not)."""
    if not config.socket.exists():
        return False
    try:
        async with open_client(str(config.socket)) as client:
            await client.list(['name=="snapfs.io/probe"'])
    except Unavailable:
        return False
    return True


@asynccontextmanager
async def open_engine(config: Config, *, mode: Mode | None = None,
                      cleanup: bool = True) -> AsyncIterator[Engine]:
    """``mode=None`` picks the daemon when one is serving on ``config.socket``.

    ``cleanup``: first undo what killed ``snapfs run`` processes left behind (containers,
    mounts, bundles, ``--rm`` snapshots) and what killed pulls left (``extract-*``
    snapshots). Every client command opens its engine here, so whichever command comes
    next after a SIGKILL does it; ``serve`` does not come here.
    """
    if mode is None:
        mode = "daemon" if await daemon_alive(config) else "embedded"
        if mode == "daemon" and in_user_namespace():
            # A rootless daemon's mounts exist only in its own mount namespace, and a root
            # daemon's overlays cannot be mounted from ours: its mounts are no use here.
            raise FailedPrecondition(
                f"snapfs daemon on {config.socket}: a command without root runs in its own "
                "user namespace and cannot use a daemon's mounts; stop the daemon or pass "
                "another --state/--address")
    config.root.mkdir(parents=True, exist_ok=True)
    config.state.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        metadata = stack.enter_context(
            await trio.to_thread.run_sync(MetadataDB.open, config.root))
        store = stack.enter_context(ContentStore(config.root / "content", metadata=metadata))
        images = stack.enter_context(ImageStore(metadata=metadata))
        registry = await stack.enter_async_context(open_registry(
            hosts_dir=config.registry.hosts_dir(),
            docker_config=config.registry.docker_config_path(),
            timeout=config.registry.read_timeout,
            connect_timeout=config.registry.connect_timeout))
        snapshots: Snapshots
        lazy: LazyLayers | None = None
        if mode == "daemon":
            snapshots = await stack.enter_async_context(open_client(str(config.socket)))
        else:
            # Lazy layers are served by the state dir's shared FUSE server (this command
            # fetches for it while it runs; snapfs.app.fuseshare), inline when rootless.
            local = await stack.enter_async_context(open_lazy_snapshotter(
                config, registry, metadata=metadata,
                fuse_server=await trio.to_thread.run_sync(command_fuse_server, config)))
            # The same client as through a daemon: containerd on this root (a daemon
            # started later) neither sees nor collects what commands made.
            snapshots = local.scoped(CLIENT_SCOPE)
            lazy = local.remote if isinstance(local.remote, LazyLayers) else None
        log.debug("engine: %s mode on %s", mode, config.root)
        engine = Engine(config, store, images, registry, snapshots, mode, lazy)
        if cleanup:
            await cleanup_stale_containers(engine)
            # The partial extractions of a killed pull (its extract-* snapshot and dir).
            await remove_interrupted_pulls(snapshots, config.root)
        yield engine
