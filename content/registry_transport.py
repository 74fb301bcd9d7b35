"""HTTP exchanges with registry endpoints: auth, redirects, retries, host fallthrough, errors.

One request goes to the endpoints of its host in order (``content.hosts``: mirrors, then the
server), skipping those without the needed capability. At each endpoint it is retried with
exponential backoff on 5xx, 429 (honouring ``Retry-After``) and connection errors; a 401 is
answered once through :class:`content.auth.Authenticator`; redirects (to blob storage) are
followed here, never by httpx, and never carry ``Authorization``. The last endpoint's error
is the one raised. HTTP failures become content errors in one table, :func:`http_error`.

Must not know blobs or manifests: it sends requests and translates their failures.
"""

from __future__ import annotations

import json
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
from content.errors import ContentError, InvalidArgument, NotFound, Unauthorized, Unavailable
from content.hosts import RegistryHost, load_hosts

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


def http_error(status: int, host: str, what: str, detail: str = "") -> ContentError:
    """THE table: an HTTP status from a registry → a content error naming host and object."""
    suffix = f" ({detail})" if detail else ""
    prefix = f"registry {host}: {what}"
    if status == 404:
        return NotFound(f"{prefix} not found{suffix}")
    if status in (401, 403):
        return Unauthorized(f"{prefix}: access denied (HTTP {status}){suffix}")
    if status == 416:
        return InvalidArgument(f"{prefix}: range not satisfiable (HTTP 416){suffix}")
    if status >= 500 or status in (408, 429):
        return Unavailable(f"{prefix}: HTTP {status}{suffix}")
    return InvalidArgument(f"{prefix}: HTTP {status}{suffix}")


def describe_transport_error(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if _refused(exc) else f"cannot connect: {text}"
    if isinstance(exc, httpx.ReadTimeout):
        return "read timed out"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed by the server: {text}"
    return f"connection failed: {text}"


def _refused(exc: BaseException) -> bool:
    """Whether a connect failure was ECONNREFUSED (trio wraps it: "all attempts … failed")."""
    seen: list[BaseException] = [exc]
    visited: set[int] = set()
    while seen:
        e = seen.pop()
        if id(e) in visited:
            continue
        visited.add(id(e))
        if isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
            return True
        if isinstance(e, BaseExceptionGroup):
            seen.extend(e.exceptions)
        seen.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return False


def transport_error(exc: httpx.TransportError, host: str, what: str) -> Unavailable:
    return Unavailable(f"registry {host}: {what}: {describe_transport_error(exc)}")


def _error_detail(body: bytes) -> str:
    """distribution's ``{"errors": [{"code": …, "message": …}]}``, shortened."""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)[:300]
    except (ValueError, AttributeError, TypeError):
        return ""


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
        last: ContentError | None = None
        for host in self.hosts(domain, call.capability):
            try:
                response = await self.send(host, call, method, host.api_base + path,
                                           headers=headers, content=content, ok=ok,
                                           buffer=buffer)
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
                   ok: Sequence[int] = (200,), buffer: bool = False) -> httpx.Response:
        """One request to one endpoint, with auth and retries (see :meth:`request`)."""
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
                limit = min(self._retries, CONNECT_RETRIES) if isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout) else self._retries
                if attempt < limit:
                    await self._backoff(attempt)
                    attempt += 1
                    continue
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
            raise http_error(status, name, call.what, _error_detail(body))

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
