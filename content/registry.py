"""The OCI distribution client: resolve, fetch manifests and blobs, push.

One :class:`Registry` serves every host a process talks to; endpoints per host come from
``certs.d`` (``content.hosts``), credentials from a docker ``config.json`` and its helpers
(``content.credentials``, used by ``content.auth``). The wire details live in
``registry_transport`` (auth, redirects, retries, fallthrough, the HTTP → error table),
``registry_manifests``, ``registry_blobs`` and ``registry_push``; this module is the surface
the rest of snapfs calls.

Must not send a request itself: it composes ``content.registry_transport``,
``content.auth`` and the ``registry_*`` modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import trio

from content import referrers as referrers_api
from content import registry_blobs as blobs
from content import registry_push as push
from content.auth import Authenticator
from content.credentials import CredentialSource, DockerConfig, StaticCredentials
from content.descriptor import Descriptor, Platform, host_platform
from content.digest import Digest
from content.errors import InvalidArgument, Unavailable
from content.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from content.reference import Reference, parse_reference
from content.registry_manifests import (
    fetch_manifest,
    manifest_what,
    parse_manifest_json,
    select_platform,
)
from content.registry_transport import RegistryStats, RegistryTransport

if TYPE_CHECKING:
    from content.store import BlobInfo, ContentStore

__all__ = ["Registry", "RegistryStats", "Resolved", "open_registry"]


@dataclass(frozen=True, slots=True)
class Resolved:
    name: Reference
    descriptor: Descriptor  # the platform's image manifest
    manifest: Mapping[str, Any]
    manifest_bytes: bytes
    index: Descriptor | None  # the index it was picked from, if any


class Registry:
    def __init__(self, transport: RegistryTransport, retries: int) -> None:
        self._t = transport
        self._retries = retries
        self.stats: RegistryStats = transport.stats
        self._no_referrers_api: set[str] = set()  # domains whose referrers API answered 404

    @property
    def auth(self) -> Authenticator:
        return self._t.auth

    async def resolve(self, ref: Reference | str, platform: Platform | None = None) -> Resolved:
        """The image manifest ``ref`` names, picked from an index for ``platform`` (the host's
        by default); verified against every digest on the way."""
        name = parse_reference(ref) if isinstance(ref, str) else ref
        desc, data = await fetch_manifest(self._t, name, name.object)
        what = f"registry {name.domain}: {manifest_what(name, name.object)}"
        index: Descriptor | None = None
        if desc.media_type in INDEX_TYPES:
            index = desc
            chosen = select_platform(parse_manifest_json(what, data),
                                     platform or host_platform(), what)
            desc, data = await fetch_manifest(self._t, name, str(chosen.digest))
            if chosen.size != desc.size:
                raise InvalidArgument(f"{what}: manifest {chosen.digest} has {desc.size} bytes, "
                                      f"the index says {chosen.size}")
            desc = replace(chosen, media_type=desc.media_type)
        if desc.media_type not in MANIFEST_TYPES:
            raise InvalidArgument(f"{what}: unsupported manifest media type {desc.media_type!r}")
        return Resolved(name, desc, parse_manifest_json(what, data), data, index)

    async def fetch_manifest(self, ref: Reference, obj: str) -> tuple[Descriptor, bytes]:
        return await fetch_manifest(self._t, ref, obj)

    async def fetch_blob(self, ref: Reference, desc: Descriptor) -> bytes:
        return await blobs.fetch_blob(self._t, ref, desc, self._retries)

    def stream_blob(self, ref: Reference, digest: Digest,
                    offset: int = 0) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Bytes of the blob from ``offset`` (unverified: the caller hashes)."""
        return blobs.open_blob(self._t, ref, digest, offset)

    async def blob_size(self, ref: Reference, digest: Digest) -> int:
        """The size of a blob the caller knows only by digest (HEAD)."""
        return await blobs.blob_size(self._t, ref, digest)

    async def fetch_range(self, ref: Reference, digest: Digest, offset: int,
                          length: int) -> bytes:
        return await blobs.fetch_range(self._t, ref, digest, offset, length, self._retries)

    async def fetch_ranges(self, ref: Reference, digest: Digest,
                           ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return await blobs.fetch_ranges(self._t, ref, digest, ranges, self._retries)

    async def fetch_blob_into(self, store: ContentStore, ref: Reference, desc: Descriptor, *,
                              on_data: Callable[[Path, int], None] | None = None,
                              ) -> BlobInfo:
        """Download into ``store``: resumes an earlier partial ingest, verified on commit.

        A transfer that breaks after the registry answered (a reset or a cut in the body,
        with or without bytes received) is resumed from the ingest with a Range request, up
        to ``retries`` times; errors before an answer (5xx,
        refusals) were retried by the transport already. ``on_data``: see
        ``ContentStore.write_stream``."""
        progress = 0
        answered = 0  # responses whose body we started reading

        @asynccontextmanager
        async def open_stream(offset: int) -> AsyncIterator[AsyncIterator[bytes]]:
            nonlocal answered

            async def counted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
                nonlocal progress
                async for chunk in chunks:
                    progress += len(chunk)
                    yield chunk

            async with blobs.open_blob(self._t, ref, desc.digest, offset,
                                       expected_size=desc.size) as chunks:
                answered += 1
                yield counted(chunks)

        failures = 0
        while True:
            before, answered_before = progress, answered
            try:
                return await store.write_stream(f"fetch-{desc.digest}", desc.digest, desc.size,
                                                open_stream, media_type=desc.media_type,
                                                on_data=on_data)
            except Unavailable:
                moved = progress > before
                if (not moved and answered == answered_before) or failures >= self._retries:
                    raise  # no answer at all (the transport retried that already), or enough
                failures += 1
                if not moved:
                    await self._t.backoff(failures)

    async def push_blob(self, ref: Reference, data: bytes, digest: Digest | None = None, *,
                        chunk_size: int | None = None, mount_from: str | None = None) -> Digest:
        return await push.push_blob(self._t, ref, data, digest, chunk_size=chunk_size,
                                    mount_from=mount_from)

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> Digest:
        return await push.push_manifest(self._t, ref, data, media_type)

    async def referrers(self, ref: Reference, subject: Digest,
                        artifact_type: str = "") -> list[referrers_api.Referrer]:
        """Artifacts whose subject is ``subject`` (referrers API, or the fallback tag; a
        registry that answered 404 to the API once is asked by tag directly afterwards)."""
        return await referrers_api.referrers(self._t, ref, subject, artifact_type,
                                             no_api=self._no_referrers_api)

    async def push_referrer(self, ref: Reference, manifest: bytes, artifact_type: str,
                            annotations: dict[str, str] | None = None) -> referrers_api.Referrer:
        return await referrers_api.push_referrer(self._t, ref, manifest, artifact_type,
                                                 annotations)

    async def remove_referrer(self, ref: Reference, subject: Digest, digest: Digest) -> bool:
        return await referrers_api.remove_referrer(self._t, ref, subject, digest)

    async def aclose(self) -> None:
        await self._t.aclose()


DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0


@asynccontextmanager
async def open_registry(*, hosts_dir: Path | None = None, docker_config: Path | None = None,
                        credentials: CredentialSource | None = None,
                        insecure: bool = False, transport: httpx.AsyncBaseTransport | None = None,
                        timeout: float = DEFAULT_READ_TIMEOUT,
                        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, retries: int = 4,
                        clock: Callable[[], float] = trio.current_time,
                        ) -> AsyncIterator[Registry]:
    """A registry client. Credentials come from ``credentials``, else from the docker
    ``config.json`` at ``docker_config`` (re-read when it changes; helpers asked per host),
    else none. ``timeout`` bounds each read (and write) of a request, ``connect_timeout``
    each connection attempt. ``clock`` (token expiry) is for tests."""
    if credentials is None:
        credentials = (DockerConfig(docker_config) if docker_config is not None
                       else StaticCredentials())
    limits = httpx.Timeout(timeout, connect=min(timeout, connect_timeout))
    async with httpx.AsyncClient(transport=transport, timeout=limits, follow_redirects=False,
                                 verify=not insecure) as client:
        stats = RegistryStats()
        t = RegistryTransport(hosts_dir=hosts_dir, insecure=insecure,
                              auth=Authenticator(client, credentials, clock=clock),
                              client=client, transport=transport, timeout=limits,
                              retries=retries, stats=stats)
        registry = Registry(t, retries)
        try:
            yield registry
        finally:
            with trio.CancelScope(shield=True):
                await registry.aclose()
