"""Manifests: fetching by tag or digest (verified), media types, and platform selection.

Must not return a manifest fetched by digest without checking it against that digest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from content.auth import repository_scope
from content.descriptor import Descriptor, Platform
from content.digest import digest_bytes, parse_digest, verify_bytes
from content.errors import DigestMismatch, InvalidArgument, NotFound
from content.hosts import PULL, RESOLVE
from content.mediatypes import INDEX_TYPES, MANIFEST_ACCEPT, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST
from content.reference import Reference
from content.registry_transport import Call, RegistryTransport

MANIFEST_LIMIT = 8 << 20  # distribution refuses manifests over 4 MiB; leave headroom


def manifest_what(ref: Reference, obj: str) -> str:
    return f"manifest {ref.path}{'@' if ':' in obj else ':'}{obj}"


def media_type_of(content_type: str, doc: Mapping[str, Any]) -> str:
    """The manifest's media type: its own ``mediaType``, else the Content-Type, else a guess."""
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = content_type.split(";", 1)[0].strip()
    if header in INDEX_TYPES or header in MANIFEST_TYPES:
        return header
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def parse_manifest_json(what: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: not a JSON object")
    return doc


async def fetch_manifest(t: RegistryTransport, ref: Reference,
                         obj: str) -> tuple[Descriptor, bytes]:
    """The manifest (or index) ``obj`` names; verified against the digest when ``obj`` is one."""
    by_digest = ":" in obj
    expected = parse_digest(obj) if by_digest else None
    call = Call("manifest", manifest_what(ref, obj), PULL if by_digest else RESOLVE,
                (repository_scope(ref.path),))
    host, response = await t.request(ref.domain, call, "GET", f"/{ref.path}/manifests/{obj}",
                                     headers={"Accept": MANIFEST_ACCEPT}, buffer=True)
    data = response.content
    what = f"registry {host.netloc}: {call.what}"
    if len(data) > MANIFEST_LIMIT:
        raise InvalidArgument(f"{what}: larger than {MANIFEST_LIMIT} bytes")
    if expected is not None:
        verify_bytes(what, data, expected)
        digest = expected
    else:
        digest = digest_bytes(data)
        echoed = response.headers.get("docker-content-digest")
        if echoed:
            claimed = parse_digest(echoed)
            if claimed.algorithm == digest.algorithm and claimed != digest:
                raise DigestMismatch(what, echoed, str(digest))
    doc = parse_manifest_json(what, data)
    media_type = media_type_of(response.headers.get("content-type", ""), doc)
    return Descriptor(media_type, digest, len(data)), data


def _variant_score(wanted: Platform, got: Platform) -> int:
    """2: same variant; 1: one side unspecified where that means the same; 0: no match."""
    if got.variant == wanted.variant:
        return 2
    defaults = {"arm64": "v8", "arm": "v7"}
    default = defaults.get(wanted.architecture, "")
    if {got.variant, wanted.variant} <= {"", default}:
        return 1
    return 0


def select_platform(index: Mapping[str, Any], platform: Platform, what: str) -> Descriptor:
    """The first index entry for ``platform`` (os, architecture, variant), best variant first."""
    best: tuple[int, Descriptor] | None = None
    seen: list[str] = []
    for entry in index.get("manifests") or []:
        desc = Descriptor.from_json(entry)
        if desc.platform is None:
            continue
        seen.append(str(desc.platform))
        if (desc.platform.os, desc.platform.architecture) != (platform.os, platform.architecture):
            continue
        score = _variant_score(platform, desc.platform)
        if score and (best is None or score > best[0]):
            best = (score, desc)
    if best is None:
        raise NotFound(f"{what}: no manifest for platform {platform} "
                       f"(has {', '.join(seen) or 'none'})")
    return best[1]
