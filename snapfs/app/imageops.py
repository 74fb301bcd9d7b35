"""Images as commands use them: references typed by users, the local image, pull if missing.

Works on an :class:`~snapfs.app.engine.Engine` (store, image table, registry, snapshots); the
table itself is ``snapfs.app.images``. Must not run containers or parse CLI flags.
"""

from __future__ import annotations

import contextlib
from typing import Any

from content.errors import InvalidArgument, NotFound
from content.image import parse_config
from content.reference import Reference, parse_reference
from snapfs.app.engine import Engine
from snapfs.app.images import ImageRecord
from snapfs.app.pull import Progress, Puller


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


async def ensure_image(engine: Engine, ref: Reference,
                       progress: Progress | None = None) -> ImageRecord:
    """The local image if there is one (no registry request, as ``docker run`` does), else pull."""
    record = local_image(engine, ref)
    if record is not None and await _is_complete(engine, record):
        return record
    puller = Puller(engine.registry, engine.store, engine.snapshots, engine.images,
                    progress=progress)
    return (await puller.pull(ref)).record


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
