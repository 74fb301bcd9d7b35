"""An OCI image layout directory as an image source: ``oci:DIR[:TAG]``.

    DIR/oci-layout         {"imageLayoutVersion": "1.0.0"}
    DIR/index.json         an image index; a tag is the annotation
                           ``org.opencontainers.image.ref.name`` of one of its manifests
    DIR/blobs/sha256/<hex> every manifest, config and layer, by digest

What ``skopeo copy … oci:DIR:TAG`` and ``umoci`` write. :class:`OciLayout` answers the
reading half of ``content.registry.Registry`` (``fetch_manifest``, ``fetch_blob``,
``stream_blob``) for ``content.convert``; every blob is checked against its digest before it
is returned whole, and a streamed one is hashed by the caller, as from a registry.

Must not write into the layout: it is read-only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from content import mediatypes as mt
from content.descriptor import Descriptor
from content.digest import Digest, digest_bytes, parse_digest
from content.errors import DigestMismatch, InvalidArgument, NotFound
from content.reference import Reference

PREFIX = "oci:"
REF_NAME = "org.opencontainers.image.ref.name"
DOMAIN = "oci-layout"  # the domain of a layout's Reference: never a registry's host
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LayoutRef:
    """``oci:DIR[:TAG]`` parsed: the directory and the tag (None: its only image)."""

    directory: Path
    tag: str | None


def parse_layout_ref(text: str) -> LayoutRef | None:
    """``oci:DIR[:TAG]`` → LayoutRef; None when ``text`` is not an ``oci:`` reference."""
    if not text.startswith(PREFIX):
        return None
    rest = text[len(PREFIX):]
    directory, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag:
        directory, tag = rest, ""
    if not directory:
        raise InvalidArgument(f"{text}: expected oci:DIR[:TAG]")
    return LayoutRef(Path(directory), tag or None)


class OciLayout:
    """The image layout at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            raise NotFound(f"oci:{root}: not an OCI image layout (no oci-layout/index.json)")

    def reference(self, tag: str | None) -> Reference:
        """A Reference naming the layout's image ``tag`` in messages and to ``fetch_*``."""
        path = str(self.root.resolve()).strip("/").lower() or "root"
        return Reference(DOMAIN, path, tag or "latest")

    def _blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def _read(self, desc_digest: Digest) -> bytes:
        try:
            data = self._blob_path(desc_digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"oci:{self.root}: blob {desc_digest} missing") from None
        got = digest_bytes(data)
        if got != desc_digest:
            raise DigestMismatch(f"oci:{self.root}: blob", str(desc_digest), str(got))
        return data

    def _top(self, ref: Reference, obj: str) -> Descriptor:
        index = json.loads((self.root / "index.json").read_text())
        entries = [Descriptor.from_json(m) for m in index.get("manifests") or []]
        named = [d for d in entries if d.annotations.get(REF_NAME) == obj]
        if named:
            return named[0]
        if obj == "latest" and len(entries) == 1 and REF_NAME not in entries[0].annotations:
            return entries[0]
        tags = sorted(t for d in entries if (t := d.annotations.get(REF_NAME)))
        raise NotFound(f"oci:{self.root}: no image tagged {obj!r} (tags: "
                       f"{', '.join(tags) or 'none'})")

    async def fetch_manifest(self, ref: Reference, obj: str) -> tuple[Descriptor, bytes]:
        if ":" in obj:  # a digest
            digest = parse_digest(obj)
            data = await trio.to_thread.run_sync(self._read, digest)
            media_type = str(json.loads(data).get("mediaType") or "")
            if not media_type:
                media_type = mt.OCI_INDEX if "manifests" in json.loads(data) else mt.OCI_MANIFEST
            return Descriptor(media_type, digest, len(data)), data
        desc = await trio.to_thread.run_sync(self._top, ref, obj)
        data = await trio.to_thread.run_sync(self._read, desc.digest)
        return desc, data

    async def fetch_blob(self, ref: Reference, desc: Descriptor) -> bytes:
        data = await trio.to_thread.run_sync(self._read, desc.digest)
        if len(data) != desc.size:
            raise InvalidArgument(f"oci:{self.root}: blob {desc.digest}: {len(data)} bytes, "
                                  f"the descriptor says {desc.size}")
        return data

    @asynccontextmanager
    async def stream_blob(self, ref: Reference, digest: Digest,
                          offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Bytes of the blob from ``offset`` (unverified: the caller hashes)."""
        try:
            f = await trio.open_file(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"oci:{self.root}: blob {digest} missing") from None
        async with f:
            await f.seek(offset)

            async def chunks() -> AsyncIterator[bytes]:
                while data := await f.read(CHUNK):
                    yield data

            yield chunks()


__all__ = ["DOMAIN", "LayoutRef", "OciLayout", "parse_layout_ref"]
