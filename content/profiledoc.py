"""The startup profile document: which files of which layers an image's first container read.

A profile belongs to one image manifest (its ``subject``) and travels with the image as an
OCI artifact whose subject is that manifest (``snapfs profile push``)::

    artifact manifest  artifactType  application/vnd.snapfs.profile.v1
      config           application/vnd.oci.empty.v1+json  ({})
      layers[0]        application/vnd.snapfs.profile.v1+json  -> the document below
      subject          the image manifest

    {"mediaType": "application/vnd.snapfs.profile.v1+json",
     "manifest": "sha256:…",                  # the image manifest it was recorded on
     "layers": ["sha256:…", "sha256:…"],       # the lazy layers it names, bottom first
     "files": [[1, "usr/bin/python3.11"], [0, "etc/ld.so.cache"], …],   # first-read order
     "image": "127.0.0.1:5000/app:1", "seconds": 10.0, "created": "2026-12-02T05:00:00Z"}

``files`` pairs an index into ``layers`` with a path in that layer (relative, normalised).
:func:`parse_document` refuses anything else — wrong media type, another subject, escaping or
duplicate paths, indexes out of range, more than :data:`MAX_FILES` files or
:data:`MAX_BYTES` bytes — with InvalidArgument naming the cause. A profile only orders
fetches: whether its paths exist is checked against each layer's verified TOC by its user.

Must not fetch, store or record: pure encoding and validation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from content.digest import Digest, digest_bytes, parse_digest
from content.errors import InvalidArgument
from content.mediatypes import OCI_MANIFEST
from content.referrers import EMPTY, EMPTY_MEDIA_TYPE
from content.toc import normalize_name

ARTIFACT_TYPE = "application/vnd.snapfs.profile.v1"  # the referrer holding a profile
PROFILE_MEDIA_TYPE = "application/vnd.snapfs.profile.v1+json"  # the profile blob itself
MAX_BYTES = 8 << 20  # a profile of 100 000 files is about 5 MB
MAX_FILES = 200_000


@dataclass(frozen=True, slots=True)
class Profile:
    manifest: Digest
    layers: tuple[Digest, ...]
    files: tuple[tuple[int, str], ...]  # (index into layers, path), first read first
    image: str = ""
    seconds: float = 0.0
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def paths_of(self, layer: Digest) -> list[str]:
        """The paths of ``layer``, in the order they were first read."""
        try:
            i = self.layers.index(layer)
        except ValueError:
            return []
        return [p for j, p in self.files if j == i]

    def by_layer(self) -> list[tuple[Digest, list[str]]]:
        return [(d, self.paths_of(d)) for d in self.layers]


def make_profile(manifest: Digest, files: Sequence[tuple[Digest, str]], *, image: str = "",
                 seconds: float = 0.0, created: str = "") -> Profile:
    """A profile from (layer, path) pairs in first-read order; duplicates dropped. Pure."""
    layers: list[Digest] = []
    out: list[tuple[int, str]] = []
    seen: set[tuple[Digest, str]] = set()
    for layer, path in files:
        if (layer, path) in seen:
            continue
        seen.add((layer, path))
        if layer not in layers:
            layers.append(layer)
        out.append((layers.index(layer), path))
    return Profile(manifest, tuple(layers), tuple(out), image, seconds, created)


def encode_document(p: Profile) -> bytes:
    doc = {"mediaType": PROFILE_MEDIA_TYPE, "manifest": str(p.manifest),
           "layers": [str(d) for d in p.layers], "files": [[i, path] for i, path in p.files],
           "image": p.image, "seconds": p.seconds, "created": p.created}
    return json.dumps(doc, separators=(",", ":")).encode()


def _str(doc: dict[str, Any], key: str, what: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: {key!r} is not a string")
    return value


def parse_document(data: bytes, what: str, *, subject: Digest | None = None) -> Profile:
    """The profile in ``data``, checked as described above (``subject``: the manifest it
    must belong to). Pure."""
    if len(data) > MAX_BYTES:
        raise InvalidArgument(f"{what}: {len(data)} bytes, more than a profile may hold "
                              f"({MAX_BYTES})")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: not a JSON object")
    if doc.get("mediaType") != PROFILE_MEDIA_TYPE:
        raise InvalidArgument(f"{what}: media type {doc.get('mediaType')!r}, not "
                              f"{PROFILE_MEDIA_TYPE}")
    manifest = parse_digest(_str(doc, "manifest", what))
    if subject is not None and manifest != subject:
        raise InvalidArgument(f"{what}: recorded on manifest {manifest}, not {subject}")
    raw_layers, raw_files = doc.get("layers"), doc.get("files")
    if not isinstance(raw_layers, list) or not isinstance(raw_files, list):
        raise InvalidArgument(f"{what}: 'layers' and 'files' must be lists")
    if len(raw_files) > MAX_FILES:
        raise InvalidArgument(f"{what}: {len(raw_files)} files, more than {MAX_FILES}")
    layers = tuple(parse_digest(x) if isinstance(x, str) else _bad(what, "a layer", x)
                   for x in raw_layers)
    if len(set(layers)) != len(layers):
        raise InvalidArgument(f"{what}: a layer is listed twice")
    files: list[tuple[int, str]] = []
    seen: set[tuple[int, str]] = set()
    for item in raw_files:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                or isinstance(item[0], bool) or not isinstance(item[1], str)):
            _bad(what, "a file entry", item)
        i, raw_path = item
        if not 0 <= i < len(layers):
            raise InvalidArgument(f"{what}: file {raw_path!r} names layer {i} of "
                                  f"{len(layers)}")
        path = normalize_name(raw_path, f"{what}: file")
        if not path or (i, path) in seen:
            raise InvalidArgument(f"{what}: file {raw_path!r} is empty or listed twice")
        seen.add((i, path))
        files.append((i, path))
    seconds = doc.get("seconds", 0.0)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        _bad(what, "seconds", seconds)
    return Profile(manifest, layers, tuple(files), _str(doc, "image", what), float(seconds),
                   _str(doc, "created", what))


def _bad(what: str, name: str, value: object) -> Any:
    raise InvalidArgument(f"{what}: malformed {name}: {str(value)[:80]!r}")


def artifact_manifest(subject_media_type: str, subject: Digest, subject_size: int,
                      blob: bytes) -> bytes:
    """The artifact manifest holding profile ``blob``, whose subject is the image manifest.
    Pure."""
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": str(digest_bytes(EMPTY)),
                   "size": len(EMPTY)},
        "layers": [{"mediaType": PROFILE_MEDIA_TYPE, "digest": str(digest_bytes(blob)),
                    "size": len(blob)}],
        "subject": {"mediaType": subject_media_type, "digest": str(subject),
                    "size": subject_size},
    }
    return json.dumps(doc, indent=2).encode()


__all__ = ["ARTIFACT_TYPE", "MAX_BYTES", "MAX_FILES", "PROFILE_MEDIA_TYPE", "Profile",
           "artifact_manifest", "encode_document", "make_profile", "parse_document"]
