"""HTTP exchanges with registry endpoints: auth, redirects, retries, host fallthrough.

One request goes to the endpoints of its host in order (``content.hosts``: mirrors, then the
server), skipping those without the needed capability. At each endpoint it is retried with
exponential backoff on 5xx, 429 (honouring ``Retry-After``), resets and protocol errors. A
connect error or a timeout on an endpoint that another follows moves on at once (a silent
mirror costs one read timeout, not five); the last endpoint retries them a little. A host
that refused a connection, or failed TLS, is not tried again within the request
(:func:`retry_limit` is the whole policy). A 401 is answered once through
:class:`content.auth.Authenticator`; redirects (to blob storage) are followed here, never by
httpx, and never carry ``Authorization``. The last endpoint's error is the one raised;
``content.registry_errors`` names failures (the HTTP → error table, TLS problems).

Must not know blobs or manifests, nor phrase errors: it sends requests and applies the policy."""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx
import trio

from content.auth import Authenticator
from content.errors import ContentError, InvalidArgument, Unavailable
from content.hosts import RegistryHost, load_hosts
from content.registry_errors import (
    error_detail,
    http_error,
    is_refused,
    tls_problem,
    transport_error,
)

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
RETRY_AFTER_CAP = 10.0
CONNECT_RETRIES = 2  # a registry that is down should fail fast
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(slots=True)
class RegistryStats:
    """Counters of what went over the wire (tests and progress reports read these)."""

    requests: int = 0
    bytes_received: int = 0
    retries: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)  # manifest, blob, range, upload
    by_host: Counter[str] = field(default_factory=Counter)
    range_starts: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Call:
    """What a request is about, for scopes, stats and error messages."""

    kind: str  # manifest | blob | upload
    what: str  # e.g. "manifest test/img:1.0", "blob sha256:ab12… in test/img"
    capability: str  # pull | resolve | push
    scopes: tuple[str, ...] = ()


def retry_limit(exc: httpx.TransportError, *, retries: int, fall_through: bool) -> int:
    """How often one endpoint is retried after this failure (the policy; :meth:`send` acts).

    A refusal or a TLS failure will not change in 100 ms: never retried. A connect failure
    or a timeout means a silent or dead endpoint: when another endpoint follows
    (``fall_through``) we move on at once, else retry a little. Resets and protocol errors
    are worth the full retries anywhere."""
    if is_refused(exc) or tls_problem(exc) is not None:
        return 0
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return 0 if fall_through else min(retries, CONNECT_RETRIES)
    if isinstance(exc, httpx.TimeoutException):
        return 0 if fall_through else retries
    return retries


def _retry_after(response: httpx.Response, attempt: int) -> float:
    backoff = min(BACKOFF_BASE * 2.0**attempt, BACKOFF_CAP)
    value = str(response.headers.get("retry-after", ""))
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP)
    except ValueError:
        return backoff


class RegistryTransport:
    """Sends requests for one registry client; owns its httpx clients."""

    def __init__(self, *, hosts_dir: Path | None, insecure: bool, auth: Authenticator,
                 client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport | None,
                 timeout: httpx.Timeout, retries: int, stats: RegistryStats) -> None:
        self._hosts_dir = hosts_dir
        self._insecure = insecure
        self.auth = auth
        self._client = client
        self._transport = transport
        self._timeout = timeout
        self._retries = retries
        self.stats = stats
        self._tls_clients: dict[tuple[object, ...], httpx.AsyncClient] = {}

    def hosts(self, domain: str, capability: str) -> list[RegistryHost]:
        found = [h for h in load_hosts(domain, self._hosts_dir, insecure=self._insecure)
                 if h.can(capability)]
        if not found:
            raise InvalidArgument(f"registry {domain}: no endpoint may {capability} (hosts.toml)")
        return found

    def _client_for(self, host: RegistryHost) -> httpx.AsyncClient:
        if self._transport is not None or not (host.skip_verify or host.ca or host.client):
            return self._client
        key = (host.skip_verify, host.ca, host.client)
        client = self._tls_clients.get(key)
        if client is None:
            verify: ssl.SSLContext | bool = False
            if not host.skip_verify:
                verify = ssl.create_default_context()
                for ca in host.ca:
                    verify.load_verify_locations(cafile=ca)
                for cert, key_file in host.client:
                    verify.load_cert_chain(cert, key_file or None)
            client = httpx.AsyncClient(verify=verify, timeout=self._timeout,
                                       follow_redirects=False)
            self._tls_clients[key] = client
        return client

    async def aclose(self) -> None:
        for client in self._tls_clients.values():
            await client.aclose()
        self._tls_clients.clear()

    async def request(self, domain: str, call: Call, method: str, path: str, *,
                      headers: dict[str, str] | None = None, content: bytes | None = None,
                      ok: Sequence[int] = (200,), buffer: bool = False,
                      ) -> tuple[RegistryHost, httpx.Response]:
        """Send to each endpoint in turn; the response (status in ``ok``) or the last
        endpoint's error. ``path`` is relative to the API base (``/<name>/…``). The response
        is streamed unless ``buffer``, which reads the body (retrying a broken one)."""
        hosts = self.hosts(domain, call.capability)
        refused: set[str] = set()  # netlocs that refused a connection during this request
        last: ContentError | None = None
        for i, host in enumerate(hosts):
            if host.netloc in refused:
                log.info("registry %s: %s: refused a connection already; skipped",
                         host.url, call.what)
                continue
            try:
                response = await self.send(host, call, method, host.api_base + path,
                                           headers=headers, content=content, ok=ok,
                                           buffer=buffer, fall_through=i < len(hosts) - 1,
                                           refused_hosts=refused)
                return host, response
            except InvalidArgument:
                raise  # our request is wrong (bad range, bad manifest): no mirror will differ
            except ContentError as exc:
                log.info("registry %s: %s: %s; trying the next endpoint", host.url, call.what, exc)
                last = exc
        assert last is not None
        raise last

    async def send(self, host: RegistryHost, call: Call, method: str, url: str, *,
                   headers: dict[str, str] | None = None, content: bytes | None = None,
                   ok: Sequence[int] = (200,), buffer: bool = False, fall_through: bool = False,
                   refused_hosts: set[str] | None = None) -> httpx.Response:
        """One request to one endpoint, with auth and retries (see :meth:`request`).
        ``fall_through``: another endpoint follows, so a silent or unreachable one is not
        retried (:func:`retry_limit`); a refusal adds the netloc to ``refused_hosts``."""
        name = host.netloc
        attempt = 0
        refusals = 0  # 401s to a request that carried credentials
        challenges = 0
        while True:
            sent = dict(host.headers)
            sent.update(headers or {})
            sent.update(await self.auth.headers(name, call.scopes))
            try:
                response = await self._exchange(host, call, method, url, sent, content)
                if buffer and response.status_code in ok:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
                    self.stats.bytes_received += len(response.content)
            except httpx.TransportError as exc:
                limit = retry_limit(exc, retries=self._retries, fall_through=fall_through)
                if attempt < limit:
                    await self._backoff(attempt)
                    attempt += 1
                    continue
                if refused_hosts is not None and is_refused(exc):
                    refused_hosts.add(name)
                raise transport_error(exc, name, call.what) from exc
            status = response.status_code
            if status in ok:
                return response
            # A 401 to an anonymous request is the challenge that tells us how to log in; one
            # to a request with credentials gets one refresh (a token can expire early).
            refused = "Authorization" in sent
            if status == 401 and challenges < 3 and not (refused and refusals):
                challenges += 1
                refusals += refused
                if await self.auth.on_unauthorized(name, call.scopes, response):
                    await response.aclose()
                    continue
            if (status >= 500 or status == 429) and attempt < self._retries:
                await response.aclose()
                self.stats.retries += 1
                await trio.sleep(_retry_after(response, attempt))
                attempt += 1
                continue
            try:
                body = await self.read(response, limit=64 * 1024)
            except httpx.TransportError:
                body = b""  # e.g. distribution's 416 announces a body it never sends
            raise http_error(status, name, call.what, error_detail(body))

    async def backoff(self, attempt: int) -> None:
        """Wait before retry ``attempt`` (counted in the stats)."""
        await self._backoff(attempt)

    async def _backoff(self, attempt: int) -> None:
        self.stats.retries += 1
        await trio.sleep(min(BACKOFF_BASE * 2.0**attempt, BACKOFF_CAP))

    async def _exchange(self, host: RegistryHost, call: Call, method: str, url: str,
                        headers: dict[str, str], content: bytes | None) -> httpx.Response:
        client = self._client_for(host)
        for _ in range(MAX_REDIRECTS + 1):
            kind = "range" if call.kind == "blob" and "Range" in headers else call.kind
            self.stats.requests += 1
            self.stats.by_kind[kind] += 1
            self.stats.by_host[httpx.URL(url).netloc.decode()] += 1
            if kind == "range":
                self.stats.range_starts.append(int(headers["Range"][6:].split("-", 1)[0]))
            request = client.build_request(method, url, headers=headers, content=content)
            response = await client.send(request, stream=True)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            await response.aclose()
            url = urljoin(str(response.url), location)
            # Blob storage gets a signed URL; our registry credentials must not follow it.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if response.status_code == 303:
                method, content = "GET", None
        raise Unavailable(f"registry {host.netloc}: {call.what}: more than {MAX_REDIRECTS} "
                          "redirects")

    async def read(self, response: httpx.Response, limit: int | None = None) -> bytes:
        """The whole body (up to ``limit`` bytes), counted; closes the response."""
        out = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                self.stats.bytes_received += len(chunk)
                out += chunk
                if limit is not None and len(out) >= limit:
                    break
        finally:
            await response.aclose()
        return bytes(out)

    async def iter_body(self, response: httpx.Response, host: str,
                        what: str) -> AsyncIterator[bytes]:
        """Body chunks, counted; a broken connection becomes Unavailable."""
        try:
            async for chunk in response.aiter_bytes():
                self.stats.bytes_received += len(chunk)
                yield chunk
        except httpx.TransportError as exc:
            raise transport_error(exc, host, what) from exc
