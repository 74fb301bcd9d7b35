"""OCI referrers: artifacts whose ``subject`` is a manifest (distribution spec 1.1).

``GET /v2/<name>/referrers/<digest>`` answers an image index of the manifests that name the
digest as their subject. A registry without the API (Debian's docker-registry 2.8 answers
404) is served by the *tag schema*: the tag ``<alg>-<hex>`` holds that index, maintained by
whoever pushes a referrer. :func:`referrers` asks the API and falls back to the tag (a
caller's ``no_api`` set remembers registries that answered 404, so that their next lookup is
one request); :func:`push_referrer` pushes the artifact by digest, then, unless the API lists
it, adds it to the tag's index; :func:`remove_referrer` takes it off the tag's index and
asks the registry to delete it (which many refuse).

Must not interpret artifacts: it lists and pushes descriptors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from content.auth import repository_scope
from content.descriptor import Descriptor
from content.digest import Digest, digest_bytes, parse_digest
from content.errors import InvalidArgument, NotFound
from content.hosts import PULL, PUSH
from content.mediatypes import OCI_INDEX, OCI_MANIFEST
from content.reference import Reference
from content.registry_manifests import fetch_manifest, parse_manifest_json
from content.registry_push import push_manifest
from content.registry_transport import Call, RegistryTransport

log = logging.getLogger(__name__)

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"


@dataclass(frozen=True, slots=True)
class Referrer:
    desc: Descriptor
    artifact_type: str


def fallback_tag(subject: Digest) -> str:
    return f"{subject.algorithm}-{subject.hex}"


def _descriptors(doc: dict[str, Any], what: str) -> list[Referrer]:
    out = []
    for m in doc.get("manifests") or []:
        if not isinstance(m, dict):
            raise InvalidArgument(f"{what}: malformed referrers index")
        try:
            out.append(Referrer(Descriptor.from_json(m), str(m.get("artifactType", ""))))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: malformed referrers index ({exc})") from None
    return out


async def _api(t: RegistryTransport, ref: Reference, subject: Digest) -> list[Referrer] | None:
    """The referrers the API lists, or None when the registry has no referrers API."""
    call = Call("manifest", f"referrers of {ref.path}@{subject}", PULL,
                (repository_scope(ref.path),))
    host, response = await t.request(ref.domain, call, "GET", f"/{ref.path}/referrers/{subject}",
                                     headers={"Accept": OCI_INDEX}, ok=(200, 404), buffer=True)
    if response.status_code != 200:
        return None
    what = f"registry {host.netloc}: {call.what}"
    return _descriptors(parse_manifest_json(what, response.content), what)


async def _tag_index(t: RegistryTransport, ref: Reference,
                     subject: Digest) -> list[Referrer]:
    tagged = replace(ref, tag=fallback_tag(subject), digest=None)
    try:
        _, data = await fetch_manifest(t, tagged, tagged.object)
    except NotFound:
        return []
    what = f"referrers tag {tagged}"
    return _descriptors(parse_manifest_json(what, data), what)


async def referrers(t: RegistryTransport, ref: Reference, subject: Digest,
                    artifact_type: str = "", *, no_api: set[str] | None = None,
                    ) -> list[Referrer]:
    """Manifests whose subject is ``subject`` (of ``artifact_type`` if given). ``no_api``:
    registry domains known to lack the API, asked by tag at once (a 404 adds the domain)."""
    found = None
    if no_api is None or ref.domain not in no_api:
        found = await _api(t, ref, subject)
        if found is None and no_api is not None:
            no_api.add(ref.domain)
    if found is None:
        found = await _tag_index(t, ref, subject)
    return [d for d in found if not artifact_type or d.artifact_type == artifact_type]


def _entry(r: Referrer) -> dict[str, Any]:
    out = r.desc.to_json()
    if r.artifact_type:
        out["artifactType"] = r.artifact_type
    return out


async def push_referrer(t: RegistryTransport, ref: Reference, manifest: bytes,
                        artifact_type: str, annotations: dict[str, str] | None = None,
                        ) -> Referrer:
    """Push an artifact manifest (its blobs already pushed) and make it findable from its
    subject: through the API if the registry lists it, else through the fallback tag."""
    doc = json.loads(manifest)
    subject = parse_digest(doc["subject"]["digest"])
    digest = digest_bytes(manifest)
    await push_manifest(t, replace(ref, tag=None, digest=digest), manifest, OCI_MANIFEST)
    desc = Referrer(Descriptor(OCI_MANIFEST, digest, len(manifest),
                               annotations=annotations or {}), artifact_type)
    listed = await _api(t, ref, subject)
    if listed is not None and any(r.desc.digest == digest for r in listed):
        return desc
    current = await _tag_index(t, ref, subject)
    if any(r.desc.digest == digest for r in current):
        return desc
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [_entry(d) for d in [*current, desc]]}
    tagged = replace(ref, tag=fallback_tag(subject), digest=None)
    await push_manifest(t, tagged, json.dumps(index).encode(), OCI_INDEX)
    log.info("%s: referrer %s listed under tag %s (no referrers API)", ref.locator,
             digest.short(), tagged.tag)
    return desc


async def remove_referrer(t: RegistryTransport, ref: Reference, subject: Digest,
                          digest: Digest) -> bool:
    """Take the referrer ``digest`` of ``subject`` off the fallback tag's index (where it is
    listed there), then DELETE its manifest; returns whether the registry deleted it (False:
    it refuses deletion, e.g. docker-registry without ``storage.delete.enabled``, so only an
    unlisted manifest stays behind, found by digest alone)."""
    current = await _tag_index(t, ref, subject)
    if any(r.desc.digest == digest for r in current):
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [_entry(d) for d in current if d.desc.digest != digest]}
        tagged = replace(ref, tag=fallback_tag(subject), digest=None)
        await push_manifest(t, tagged, json.dumps(index).encode(), OCI_INDEX)
        log.info("%s: referrer %s taken off tag %s", ref.locator, digest.short(), tagged.tag)
    call = Call("manifest", f"manifest {ref.path}@{digest}", PUSH,
                (repository_scope(ref.path, push=True),))
    _, response = await t.request(ref.domain, call, "DELETE", f"/{ref.path}/manifests/{digest}",
                                  ok=(200, 202, 404, 405), buffer=True)
    return response.status_code in (200, 202, 404)


__all__ = ["EMPTY", "EMPTY_MEDIA_TYPE", "Referrer", "fallback_tag", "push_referrer", "referrers",
           "remove_referrer"]
