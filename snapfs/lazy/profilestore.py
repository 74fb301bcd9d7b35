"""Startup profiles kept on this node, one per image manifest, and where a read path belongs.

    <root>/profiles/sha256/<manifest hex>.json    a content.profiledoc document

Keyed by the image manifest's digest, not by the layer set: a published profile's subject is
the manifest, so the lookup on a pull, ``snapfs profile push|show|rm IMAGE`` and the local
file all name the same thing; and the manifest pins the config too (entrypoint, env, working
directory), which decides what a container reads as much as the layers do. Files are written
whole (temp file, fsync, rename) and only by the first recording of a manifest; a file that
does not parse is reported and treated as absent.

:func:`attribute` gives each path a recording saw through the merged view the layer it was
read from. Must not record, fetch or publish (``snapfs.lazy.profiles``, ``snapfs.app.profiles``).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from pathlib import Path

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument
from content.profiledoc import Profile, encode_document, parse_document
from content.profilefile import write_profile

log = logging.getLogger(__name__)


def attribute(paths: Sequence[str],
              chain: Sequence[tuple[Digest, Container[str]]]) -> list[tuple[Digest, str]]:
    """For each path (merged view, first-read order), the topmost layer of ``chain`` (bottom
    first: each layer's digest and the regular files it holds) that holds it — the copy an
    overlay serves. A path no layer holds is left out. Pure."""
    out = []
    for path in paths:
        for digest, files in reversed(chain):
            if path in files:
                out.append((digest, path))
                break
    return out


class ProfileStore:
    """The profiles under ``<root>/profiles`` (blocking file I/O: call from a thread)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "profiles" / "sha256"

    def path(self, manifest: Digest) -> Path:
        if manifest.algorithm != "sha256":
            raise InvalidArgument(f"profile of manifest {manifest}: only sha256 manifests")
        return self.dir / f"{manifest.hex}.json"

    def exists(self, manifest: Digest) -> bool:
        return self.path(manifest).is_file()

    def read(self, manifest: Digest) -> Profile | None:
        """The local profile of ``manifest``; None if there is none or it is unreadable
        (logged)."""
        path = self.path(manifest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return parse_document(data, f"local profile {path}", subject=manifest)
        except InvalidArgument as exc:
            log.warning("%s; ignored", exc)
            return None

    def write(self, profile: Profile) -> Path:
        dest = self.path(profile.manifest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_profile(dest, encode_document(profile))
        return dest

    def remove(self, manifest: Digest) -> bool:
        try:
            self.path(manifest).unlink()
        except FileNotFoundError:
            return False
        return True

    def manifests(self) -> list[Digest]:
        if not self.dir.is_dir():
            return []
        return sorted(parse_digest(f"sha256:{p.stem}") for p in self.dir.glob("*.json")
                      if len(p.stem) == 64)


__all__ = ["ProfileStore", "attribute"]
