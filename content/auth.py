"""Registry authentication: Basic and Bearer tokens, with credentials from a source.

The flow is the distribution spec's: a request answered 401 carries
``WWW-Authenticate: Bearer realm="…",service="…",scope="…"`` (or ``Basic realm="…"``);
we GET the realm with ``service`` and ``scope=repository:<path>:pull[,push]`` (with Basic
credentials when we have them), cache the token per (host, scope) until ``expires_in``
(60 s when absent) and retry. Later requests to that host get the token up front. With an
identity (refresh) token instead of a password, the token is asked for with an OAuth2
``POST`` (``grant_type=refresh_token``), as the docker CLI does.

Credentials come from a :class:`content.credentials.CredentialSource` (a docker
``config.json`` and its helpers, and in the daemon kubelet's through CRI first): asked once per
(host, repository of the request's scope), and again after a 401, so a rotated password, a new
``docker login`` or a newer PullImage is picked up by a long-running daemon. A registry token
(CRI's ``registry_token``) is used as the bearer token itself, without a token server.

Must not keep credentials or tokens anywhere but in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import trio

from content.credentials import (
    Credentials,
    CredentialSource,
    StaticCredentials,
    load_docker_config,
)
from content.errors import Unauthorized, Unavailable

__all__ = ["Authenticator", "Challenge", "Credentials", "load_docker_config",
           "parse_challenges", "repository_scope", "scope_repository"]

CLIENT_ID = "snapfs"  # OAuth2 client_id on refresh-token requests

DEFAULT_TOKEN_TTL = 60.0
# Renew a little before the server's expiry so a token doesn't lapse in flight.
EXPIRY_MARGIN = 5.0

_PARAM = re.compile(r'\s*([a-zA-Z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "bearer" or "basic"
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (one or more challenges) into scheme + params."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end() :]
        params: dict[str, str] = {}
        while rest:
            pm = _PARAM.match(rest)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[pm.end() :]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


def repository_scope(path: str, push: bool = False) -> str:
    return f"repository:{path}:{'pull,push' if push else 'pull'}"


def scope_repository(scopes: Sequence[str]) -> str:
    """The repository a request is about: that of its first ``repository:`` scope ("" when
    none). A cross-repository mount's second scope is the source, not the target."""
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        if kind == "repository" and ":" in rest:
            return rest.rpartition(":")[0]
    return ""


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Per-host auth state shared by every request of one registry client."""

    def __init__(self, client: httpx.AsyncClient,
                 credentials: CredentialSource | Mapping[str, Credentials],
                 *, clock: Callable[[], float] = trio.current_time) -> None:
        self._client = client
        self._source: CredentialSource = (
            StaticCredentials(credentials) if isinstance(credentials, Mapping) else credentials)
        self._credentials: dict[tuple[str, str], Credentials | None] = {}
        self._clock = clock
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        # One token fetch per (host, scope) at a time: concurrent layer pulls share it.
        self._locks: dict[tuple[str, tuple[str, ...]], trio.Lock] = {}
        self.token_requests = 0

    async def credentials_for(self, host: str, repository: str = "") -> Credentials | None:
        key = (host, repository)
        if key not in self._credentials:
            self._credentials[key] = await self._source.get(host, repository)
        return self._credentials[key]

    async def headers(self, host: str, scopes: Sequence[str]) -> dict[str, str]:
        """Authorization for a request to ``host``: nothing until it has challenged us."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            creds = await self.credentials_for(host, scope_repository(scopes))
            return {"Authorization": creds.basic_header()} if creds and creds.username else {}
        key = (host, tuple(scopes))
        async with self._locks.setdefault(key, trio.Lock()):
            token = self._tokens.get(key)
            if token is None or token.expires_at <= self._clock():
                token = await self._fetch_token(host, challenge, scopes)
        return {"Authorization": f"Bearer {token.value}"}

    async def on_unauthorized(self, host: str, scopes: Sequence[str],
                              response: httpx.Response) -> bool:
        """Learn from a 401; True when a retry may now succeed (a fresh token or Basic creds)."""
        challenges = parse_challenges(response.headers.get("www-authenticate", ""))
        # Asked again: they may have changed since.
        self._credentials.pop((host, scope_repository(scopes)), None)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            # A token refused (expired early, or for the wrong scope) is dropped; the retry
            # fetches a fresh one, and the caller treats a second refusal as final.
            self._challenges[host] = bearer
            self._tokens.pop((host, tuple(scopes)), None)
            return True
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if basic is not None and await self.credentials_for(
                host, scope_repository(scopes)) is not None:
            self._challenges[host] = basic
            return True
        return False

    async def _fetch_token(self, host: str, challenge: Challenge,
                           scopes: Sequence[str]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise Unauthorized(f"registry {host}: bearer challenge without a realm")
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        key = (host, tuple(scopes))
        if not scopes and "scope" in challenge.params:
            scopes = [challenge.params["scope"]]
        params.extend(("scope", s) for s in scopes)
        creds = await self.credentials_for(host, scope_repository(scopes))
        if creds is not None and creds.registry_token:
            # Issued for the registry already; when it is refused, a second refusal is final.
            token = _Token(creds.registry_token, self._clock() + DEFAULT_TOKEN_TTL)
            self._tokens[key] = token
            return token
        self.token_requests += 1
        try:
            if creds is not None and creds.identity_token is not None:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": CLIENT_ID, "scope": " ".join(str(s) for s in scopes)}
                if "service" in challenge.params:
                    form["service"] = challenge.params["service"]
                response = await self._client.post(realm, data=form)
            else:
                headers = {"Authorization": creds.basic_header()} if creds is not None else {}
                response = await self._client.get(realm, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"registry {host}: token server {realm}: {exc!r}") from exc
        if response.status_code in (401, 403):
            raise Unauthorized(
                f"registry {host}: token server {realm} refused "
                f"{_who(creds)} "
                f"(HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise Unavailable(
                f"registry {host}: token server {realm} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            value = str(body.get("token") or body.get("access_token") or "")
            ttl = float(body.get("expires_in") or DEFAULT_TOKEN_TTL)
        except (ValueError, AttributeError) as exc:
            raise Unauthorized(
                f"registry {host}: token server {realm}: bad answer: {exc}"
            ) from None
        if not value:
            raise Unauthorized(f"registry {host}: token server {realm}: answer has no token")
        token = _Token(value, self._clock() + max(ttl - EXPIRY_MARGIN, ttl / 2))
        self._tokens[key] = token
        return token


def _who(creds: Credentials | None) -> str:
    if creds is None:
        return "anonymous access"
    if creds.identity_token is not None:
        return "the identity token"
    return f"credentials for {creds.username}"
