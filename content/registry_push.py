"""Pushing blobs and manifests (distribution spec: HEAD, POST [mount], PATCH*, PUT).

Must not read files: it pushes the bytes it is handed.
"""

from __future__ import annotations

from urllib.parse import urljoin

import httpx

from content.auth import repository_scope
from content.digest import Digest, digest_bytes, parse_digest, verify_bytes
from content.errors import ContentError, DigestMismatch, InvalidArgument
from content.hosts import PUSH, RegistryHost
from content.reference import Reference
from content.registry_transport import Call, RegistryTransport

_OCTETS = "application/octet-stream"


def _location(response: httpx.Response, what: str) -> str:
    location = response.headers.get("location")
    if not location:
        raise InvalidArgument(f"registry {response.url.netloc.decode()}: {what}: upload "
                              f"answer HTTP {response.status_code} without a Location")
    return urljoin(str(response.url), str(location))


async def _push_blob_to(t: RegistryTransport, host: RegistryHost, ref: Reference, data: bytes,
                        digest: Digest, chunk_size: int | None, mount_from: str | None) -> None:
    scopes = [repository_scope(ref.path, push=True)]
    if mount_from:
        scopes.append(repository_scope(mount_from))
    call = Call("upload", f"blob {digest.short()}… in {ref.path}", PUSH, tuple(scopes))
    blobs = f"{host.api_base}/{ref.path}/blobs"
    head = await t.send(host, call, "HEAD", f"{blobs}/{digest}", ok=(200, 404), buffer=True)
    if head.status_code == 200:
        return
    start = httpx.URL(f"{blobs}/uploads/")
    if mount_from:
        start = start.copy_merge_params({"mount": str(digest), "from": mount_from})
    post = await t.send(host, call, "POST", str(start), ok=(201, 202), buffer=True)
    if post.status_code == 201:
        return  # mounted from the other repository: nothing to upload
    location = _location(post, call.what)
    body = data
    if chunk_size is not None:
        if chunk_size <= 0:
            raise InvalidArgument(f"{call.what}: chunk size must be positive, got {chunk_size}")
        for offset in range(0, len(data), chunk_size):
            chunk = data[offset : offset + chunk_size]
            patch = await t.send(host, call, "PATCH", location, content=chunk, ok=(202,),
                                 buffer=True, headers={
                                     "Content-Type": _OCTETS,
                                     "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
            location = _location(patch, call.what)
        body = b""
    put_url = httpx.URL(location).copy_add_param("digest", str(digest))
    await t.send(host, call, "PUT", str(put_url), content=body, ok=(201, 204), buffer=True,
                 headers={"Content-Type": _OCTETS})


async def push_blob(t: RegistryTransport, ref: Reference, data: bytes,
                    digest: Digest | None = None, *, chunk_size: int | None = None,
                    mount_from: str | None = None) -> Digest:
    """Upload ``data`` unless the repository has it; the endpoints that may push, in turn."""
    if digest is None:
        digest = digest_bytes(data)
    else:
        verify_bytes(f"blob to push to {ref.locator}", data, digest)
    last: ContentError | None = None
    for host in t.hosts(ref.domain, PUSH):
        try:
            await _push_blob_to(t, host, ref, data, digest, chunk_size, mount_from)
            return digest
        except InvalidArgument:
            raise
        except ContentError as exc:
            last = exc
    assert last is not None
    raise last


async def push_manifest(t: RegistryTransport, ref: Reference, data: bytes,
                        media_type: str) -> Digest:
    """PUT a manifest or index under ``ref.object`` (a tag, or its own digest)."""
    digest = digest_bytes(data)
    if ref.digest is not None:
        verify_bytes(f"manifest to push to {ref}", data, ref.digest)
    sep = "@" if ref.digest is not None else ":"
    call = Call("manifest", f"manifest {ref.path}{sep}{ref.object}", PUSH,
                (repository_scope(ref.path, push=True),))
    host, response = await t.request(ref.domain, call, "PUT",
                                     f"/{ref.path}/manifests/{ref.object}",
                                     headers={"Content-Type": media_type}, content=data,
                                     ok=(200, 201, 202), buffer=True)
    echoed = response.headers.get("docker-content-digest")
    if echoed:
        stored = parse_digest(echoed)
        if stored.algorithm == digest.algorithm and stored != digest:
            raise DigestMismatch(f"registry {host.netloc}: {call.what}", str(digest), echoed)
    return digest
