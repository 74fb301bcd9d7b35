"""A published startup profile: fetching it from its referrer artifact and checking it.

The artifact (found through ``content.referrers`` by its subject, the image manifest) must
name that manifest as its subject and hold exactly one blob of media type
``content.profiledoc.PROFILE_MEDIA_TYPE``, at most ``MAX_BYTES``; the blob is fetched by
digest (so verified), parsed strictly (``content.profiledoc.parse_document``, which checks the
subject again), and may name only layers of the image. Anything else is InvalidArgument
naming the artifact and the cause. Used by the lazy path (``snapfs.lazy.profiles``) and by
``snapfs profile show`` alike.

Must not decide what to fetch first or cache anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from content.descriptor import Descriptor
from content.digest import Digest
from content.errors import InvalidArgument
from content.profiledoc import MAX_BYTES, PROFILE_MEDIA_TYPE, Profile, parse_document
from content.reference import Reference
from snapfs.lazy.gzsource import ReferrerSource


async def fetch_published(source: ReferrerSource, ref: Reference, subject: Digest,
                          artifact: Descriptor,
                          layers: Sequence[Digest] | None = None) -> Profile:
    """The profile the artifact ``artifact`` (a referrer of manifest ``subject``) holds;
    ``layers``: the image's layers, which the profile may name (None: not checked)."""
    what = f"profile artifact {artifact.digest.short()}"
    _, raw = await source.fetch_manifest(ref, str(artifact.digest))
    try:
        doc = json.loads(raw)
        named = str((doc.get("subject") or {}).get("digest"))
        blobs = [b for b in doc.get("layers") or []
                 if isinstance(b, dict) and b.get("mediaType") == PROFILE_MEDIA_TYPE]
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(f"{what}: not an artifact manifest") from None
    if named != str(subject):
        raise InvalidArgument(f"{what}: names subject {named}, not the image manifest "
                              f"{subject}")
    if len(blobs) != 1:
        raise InvalidArgument(f"{what}: holds {len(blobs)} profile blobs, not one")
    desc = Descriptor.from_json(blobs[0])
    if desc.size > MAX_BYTES:
        raise InvalidArgument(f"{what}: a profile blob of {desc.size} bytes, more than "
                              f"{MAX_BYTES}")
    data = await source.fetch_blob(ref, desc)  # verified against its digest
    profile = parse_document(data, f"{what}: blob {desc.digest.short()}", subject=subject)
    if layers is not None:
        stray = [d for d in profile.layers if d not in layers]
        if stray:
            raise InvalidArgument(f"{what}: names layer {stray[0].short()}, not one of the "
                                  "image's")
    return profile


__all__ = ["fetch_published"]
