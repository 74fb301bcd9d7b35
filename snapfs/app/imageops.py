"""Images as commands use them: references typed by users, the local image, pull if missing,
untagging and the removal of snapshots no image uses any more.

Works on an :class:`~snapfs.app.engine.Engine` (store, image table, registry, snapshots); the
table itself is ``snapfs.app.images``. Must not run containers or parse CLI flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Literal

import trio

from content.descriptor import Platform
from content.errors import InvalidArgument, NotFound
from content.image import parse_config
from content.leases import active_leases
from content.reference import Reference, parse_reference
from snapfs.app.engine import Engine
from snapfs.app.images import ImageRecord
from snapfs.app.pull import Progress, PulledImage, Puller
from snapfs.snapshot.types import Kind
from snapfs.sys.units import parse_rate


def parse_image_ref(text: str) -> Reference:
    """``text`` as an image reference; InvalidArgument ("invalid reference format…") if not."""
    first, sep, _ = text.partition("/")
    # parse_reference, like docker's parser, takes an upper-case first component for a
    # registry host ("UPPER/case"). No registry is named that way in practice; a user who
    # typed it meant a repository, and repositories are lower case: say so, send no request.
    if sep and first != first.lower() and not any(c in first for c in ".:["):
        raise InvalidArgument(f"invalid reference format {text!r}: repository name must be "
                              "lowercase")
    try:
        return parse_reference(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid reference format: {exc}") from exc


def local_image(engine: Engine, ref: Reference) -> ImageRecord | None:
    """The image record for ``ref``: by name, or for ``repo@digest`` any record of that
    repository whose manifest has that digest."""
    try:
        return engine.images.get(str(ref))
    except NotFound:
        pass
    if ref.digest is None:
        return None
    for record in engine.images.list():
        if record.target.digest == ref.digest and record_locator(record) == ref.locator:
            return record
    return None


def record_locator(record: ImageRecord) -> str:
    with contextlib.suppress(InvalidArgument):
        return parse_reference(record.name).locator
    return ""


PullPolicy = Literal["missing", "always", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("missing", "always", "never")


async def ensure_image(engine: Engine, ref: Reference, progress: Progress | None = None, *,
                       platform: Platform | None = None,
                       policy: PullPolicy = "missing") -> ImageRecord:
    """``docker run --pull``: ``missing`` uses the local image if there is one (no registry
    request) and pulls otherwise; ``always`` pulls; ``never`` fails unless it is local."""
    if policy not in PULL_POLICIES:
        raise InvalidArgument(f"--pull {policy!r}: expected one of {', '.join(PULL_POLICIES)}")
    if policy != "always":
        record = local_image(engine, ref)
        if record is not None and await _is_complete(engine, record):
            return record
        if policy == "never":
            raise NotFound(f"image {ref}: not present locally (and --pull never)")
    return (await pull_image(engine, ref, platform, progress=progress)).record


async def pull_image(engine: Engine, ref: Reference, platform: Platform | None = None, *,
                     progress: Progress | None = None) -> PulledImage:
    """Pull ``ref`` into the engine's store, snapshots and image table (``snapfs.app.pull``)."""
    unpack = engine.config.unpack
    puller = Puller(engine.registry, engine.store, engine.snapshots, engine.images,
                    progress=progress, leases=engine.config.root,
                    download_limit=unpack.parallel_downloads, max_ratio=unpack.max_expansion,
                    max_size=parse_rate(unpack.max_size, "[unpack] max_size"))
    return await puller.pull(ref, platform)


async def _is_complete(engine: Engine, record: ImageRecord) -> bool:
    if not engine.store.exists(record.config):
        return False
    top = record.top_chain_id
    if top is None:
        return True
    try:
        await engine.snapshots.stat(str(top))
    except NotFound:
        return False
    return True


def image_config(engine: Engine, record: ImageRecord) -> dict[str, Any]:
    """The runtime part (``config``) of the image's config document."""
    return dict(parse_config(engine.store.read(record.config)).raw.get("config") or {})


def untag_images(engine: Engine, texts: Sequence[str]) -> list[str]:
    """Delete the image records ``texts`` name (all checked before any is removed; NotFound
    for the first that names none); their names, in order. Snapshots stay: see
    :func:`remove_unused_snapshots`."""
    names = []
    for text in texts:
        record = local_image(engine, parse_image_ref(text))
        if record is None:
            raise NotFound(f"image {text}: no such image")
        names.append(record.name)
    for name in names:
        engine.images.delete(name)
    return names


async def remove_unused_snapshots(engine: Engine) -> list[str]:
    """Committed snapshots no image names, no pull in flight holds (its lease) and nothing
    builds on, children first (as containerd's GC). A container's snapshot is active, so
    the layers under it stay."""
    leased = await trio.to_thread.run_sync(active_leases, engine.config.root)
    keep = {str(c) for r in engine.images.list() for c in r.chain_ids} | leased.snapshots
    removed: list[str] = []
    while True:
        infos = await engine.snapshots.list()
        parents = {i.parent for i in infos}
        unused = [i.name for i in infos
                  if i.kind == Kind.COMMITTED and i.name not in keep and i.name not in parents]
        if not unused:
            return removed
        for name in unused:
            await engine.snapshots.remove(name)
            removed.append(name)
