"""``snapfs ps`` and ``snapfs images`` without opening an engine: records read directly.

Container records are files under ``<state>/containers`` and the image table is its own
LMDB (``snapfs.app.images``); neither needs a daemon, a registry client, FUSE or trio. So a
listing reads them directly and starts in the time of a plain interpreter — unless a killed
``snapfs run`` left something to clean up (a container whose owner is gone, a bundle nobody
owns), in which case it opens the engine once, which cleans up as every command does
(``snapfs.app.containers.cleanup_stale_containers``), and then reads.

Must not print or mount: it returns records.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runtime.bundle import is_stale
from snapfs.app.records import ContainerRecord, container_dirs, list_records, read_record
from snapfs.config import Config

if TYPE_CHECKING:
    from snapfs.app.images import ImageRecord


def leftovers(config: Config) -> bool:
    """Whether a killed ``snapfs run`` left a container, bundle or rootfs to clean up."""
    for cdir in container_dirs(config.state / "containers"):
        rec = read_record(cdir)
        if rec is None or rec.status == "dead":
            return True
    bundles = config.state / "bundles"
    return any(is_stale(bundle) for bundle in _dirs(bundles))


def containers(config: Config, *, all: bool = False) -> list[ContainerRecord]:
    """Running containers (``all``: every one that has a record), oldest first."""
    _clean_up_if_needed(config)
    records = list_records(config.state / "containers")
    return [r for r in records if all or r.status == "running"]


def images(config: Config) -> list[ImageRecord]:
    """Every local image, by name."""
    from snapfs.app.images import ImageStore  # LMDB: only `images` needs it, not `ps`

    _clean_up_if_needed(config)
    with ImageStore(config.root) as store:
        return store.list()


def _clean_up_if_needed(config: Config) -> None:
    if leftovers(config):
        import trio

        trio.run(_clean_up, config)


async def _clean_up(config: Config) -> None:
    from snapfs.app.engine import open_engine

    async with open_engine(config):
        pass  # opening it cleans up


def _dirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


__all__ = ["containers", "images", "leftovers"]
