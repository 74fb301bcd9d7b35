"""A lazy layer's fetch policy: the ``[fetch]`` options, the startup set, and fetching it.

Per mounted lazy layer, ``snapfs.lazy.lifecycle`` first fetches the **startup set** — the
files before eStargz's ``.prefetch.landmark`` (``prefetch_set``), or, when the layer has no
landmark, the paths of a recorded profile — at startup priority, merged into as few Range
requests as ``plan_spans`` allows (converted images keep them contiguous at the start of the
blob, so that is usually one request). Then (``[fetch] background``, on by default) the whole
blob is completed at background priority (``snapfs.lazy.complete``); the priorities are the
one scheduler's (``snapfs.lazy.scheduler``). Must not issue requests itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.locality import START_WINDOW
from snapfs.lazy.scheduler import (
    DEFAULT_BACKGROUND_CONCURRENCY,
    DEFAULT_BACKGROUND_HOLD,
    DEFAULT_BACKGROUND_PAUSE,
    DEFAULT_CONCURRENCY,
    TokenBucket,
)
from snapfs.sys.units import parse_rate  # re-exported: the [fetch] rate syntax

log = logging.getLogger(__name__)

PREPARE_TIMEOUT = 30.0
# How often unused FUSE directories of materialised layers are looked for, and how long one
# stays after its layer was materialised (a Mounts answer from just before still names it).
RELEASE_INTERVAL = 10.0
# Seconds one lazy read may wait for the registry before it fails with EIO (the next read
# tries again): a stalled registry must not hang a container's read for good.
READ_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """The ``[fetch]`` section of the config file."""

    prepare_timeout: float = PREPARE_TIMEOUT  # seconds a Prepare may wait for the registry
    concurrency: int = DEFAULT_CONCURRENCY  # on-demand (and startup) Range requests in flight
    # Fetch the whole of each lazy layer once mounted, verify it and materialise it (the hot
    # path: the next container's rootfs is a plain kernel overlay).
    background: bool = True
    background_rate: int = 0  # bytes per second for background fetches; 0 = unlimited
    background_concurrency: int = DEFAULT_BACKGROUND_CONCURRENCY
    # For ``background_hold`` seconds after a layer is mounted, a background piece waits for
    # ``background_pause`` seconds without on-demand (or startup) requests (snapfs.lazy.scheduler).
    background_pause: float = DEFAULT_BACKGROUND_PAUSE
    background_hold: float = DEFAULT_BACKGROUND_HOLD
    release_interval: float = RELEASE_INTERVAL
    # Compressed bytes of following chunks an on-demand miss fetches along, at first; then
    # adapted to what is read (snapfs.lazy.locality). 0 = only what is read.
    window: int = START_WINDOW
    # A layer that could be lazy but cannot be served (no /dev/fuse, …) fails its Prepare
    # instead of being pulled in full ([fetch] lazy = "required", --lazy=required).
    lazy_required: bool = False
    read_timeout: float = READ_TIMEOUT  # [fetch] read_timeout: one read's deadline


def startup_paths(landmark: Sequence[str] | None, profile: Sequence[str]) -> list[str]:
    """The startup set: the landmark's files when the layer has a landmark (even an empty
    ``.no.prefetch.landmark`` set: the image's author decided), else a recorded profile's."""
    return list(landmark) if landmark is not None else list(profile)


async def fetch_startup(fetcher: LayerFetcher, paths: Sequence[str], *,
                        bridge: int = 0) -> None:
    """Fetch ``paths`` of the layer now, at startup priority (``bridge``: the holes of at
    most that many bytes between them too, in the same requests)."""
    if paths:
        await fetcher.prefetch(paths, bridge=bridge)
        log.info("%s: startup set of %d file(s) fetched (%d request(s))", fetcher.what,
                 len(paths), fetcher.stats.prefetch_requests)


__all__ = ["FetchOptions", "TokenBucket", "fetch_startup", "parse_rate",
           "startup_paths"]
