"""Where registry credentials come from: a docker ``config.json`` and its credential helpers.

    {"auths": {"reg.example.com": {"auth": "<base64 user:password>"},
               "other.example.com": {"username": "u", "password": "p"},
               "sso.example.com": {"identitytoken": "<refresh token>"}},
     "credsStore": "secretservice",            # docker-credential-secretservice for all hosts
     "credHelpers": {"gcr.io": "gcr"}}         # docker-credential-gcr for gcr.io only

For a host, a helper (``credHelpers[host]``, else ``credsStore``) is asked first, as the
docker CLI does: ``docker-credential-<name> get`` with the server URL on stdin prints
``{"ServerURL": …, "Username": …, "Secret": …}``; a helper that has nothing for the host
exits non-zero saying "credentials not found", and the ``auths`` entry (if any) is used.
``Username == "<token>"`` means ``Secret`` is an identity (OAuth2 refresh) token.

:class:`DockerConfig` is the one credential source every registry client uses (pull, run,
convert, serve and the lazy fetcher alike). It re-reads the file when it changes (a
``docker login`` while the daemon runs) and never caches what a helper said: the
authenticator caches per host and asks again after a refusal.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from content.errors import InvalidArgument, Unauthorized

log = logging.getLogger(__name__)

IDENTITY_TOKEN_USER = "<token>"
HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 30.0  # a helper may prompt a keyring; a hung one must not hang a pull
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    # The secret; an identity token when username is "<token>". Never in a repr: a
    # credential must not reach a log line through an f-string or a traceback.
    password: str = field(repr=False)
    # A bearer token for the registry itself (CRI's AuthConfig.registry_token): sent as is,
    # no token server asked.
    registry_token: str = field(default="", repr=False)

    @property
    def identity_token(self) -> str | None:
        return self.password if self.username == IDENTITY_TOKEN_USER else None

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


class CredentialSource(Protocol):
    """What the authenticator asks: credentials for a registry host (``domain[:port]``),
    and the repository the request is about ("" when none) for sources that key by it
    (``content.keychain``); a docker config answers per host."""

    async def get(self, host: str, repository: str = "") -> Credentials | None: ...


class StaticCredentials:
    """A fixed table (tests, or credentials handed over by a caller such as CRI)."""

    def __init__(self, table: Mapping[str, Credentials] | None = None) -> None:
        self._table = dict(table or {})

    async def get(self, host: str, repository: str = "") -> Credentials | None:
        return self._table.get(host)


def config_host(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``http://h:5000`` → ``h:5000``."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def default_docker_config() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (docker's own rule)."""
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def _auth_entry(path: Path, key: str, entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"docker config {path}: auths.{key}: want an object")
    if entry.get("identitytoken"):
        return Credentials(IDENTITY_TOKEN_USER, str(entry["identitytoken"]))
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError) as exc:
            raise InvalidArgument(
                f"docker config {path}: auths.{key}.auth: not base64 of user:password: {exc}"
            ) from None
        if not sep:
            raise InvalidArgument(
                f"docker config {path}: auths.{key}.auth: not base64 of user:password")
        return Credentials(user, password)
    if entry.get("username"):
        return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    auths: Mapping[str, Credentials]  # by host
    helpers: Mapping[str, str]  # credHelpers, by host
    store: str  # credsStore, "" when none


def parse_docker_config(path: Path, text: str) -> ParsedConfig:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"docker config {path}: cannot read: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"docker config {path}: want a JSON object")
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise InvalidArgument(f"docker config {path}: key 'auths': want an object")
    table: dict[str, Credentials] = {}
    for key, entry in auths.items():
        creds = _auth_entry(path, key, entry)
        if creds is not None:
            table[config_host(key)] = creds
    helpers = doc.get("credHelpers", {})
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise InvalidArgument(f"docker config {path}: key 'credHelpers': want host → name")
    store = doc.get("credsStore", "")
    if not isinstance(store, str):
        raise InvalidArgument(f"docker config {path}: key 'credsStore': want a name")
    return ParsedConfig(table, {config_host(k): v for k, v in helpers.items()}, store)


def load_docker_config(path: Path) -> dict[str, Credentials]:
    """The ``auths`` credentials of ``path`` by host ({} when the file is missing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidArgument(f"docker config {path}: cannot read: {exc}") from None
    return dict(parse_docker_config(path, text).auths)


def helper_server_url(host: str) -> str:
    # docker stores (and asks helpers for) Docker Hub under its v1 index URL.
    return DOCKER_HUB_KEY if host == "docker.io" else host


async def run_helper(name: str, host: str) -> Credentials | None:
    """``docker-credential-<name> get`` for ``host``; None when it has nothing for it."""
    binary = shutil.which(HELPER_PREFIX + name)
    what = f"credential helper {HELPER_PREFIX}{name}"
    if binary is None:
        raise Unauthorized(f"{what} (for {host}): not found on PATH")
    with trio.move_on_after(HELPER_TIMEOUT) as scope:
        proc = await trio.run_process([binary, "get"], stdin=helper_server_url(host).encode(),
                                      capture_stdout=True, capture_stderr=True, check=False)
    if scope.cancelled_caught:
        raise Unauthorized(f"{what} (for {host}): no answer in {HELPER_TIMEOUT:.0f} s")
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        said = out or proc.stderr.decode(errors="replace").strip()
        if "credentials not found" in said.lower():
            return None
        raise Unauthorized(f"{what} (for {host}): exit {proc.returncode}: {said[:200]}")
    try:
        doc = json.loads(out)
        username, secret = str(doc["Username"]), str(doc["Secret"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Unauthorized(f"{what} (for {host}): bad answer ({exc!r})") from None
    return Credentials(username, secret)


class DockerConfig:
    """Credentials from a docker ``config.json`` at ``path`` (absent: anonymous)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._parsed = ParsedConfig({}, {}, "")

    def _load(self) -> ParsedConfig:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._parsed = None, ParsedConfig({}, {}, "")
            return self._parsed
        except OSError as exc:
            raise InvalidArgument(f"docker config {self.path}: cannot read: {exc}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                text = self.path.read_text()
            except OSError as exc:
                raise InvalidArgument(f"docker config {self.path}: cannot read: {exc}") from None
            self._parsed = parse_docker_config(self.path, text)
            self._stamp = stamp
        return self._parsed

    async def get(self, host: str, repository: str = "") -> Credentials | None:
        parsed = self._load()
        helper = parsed.helpers.get(host) or parsed.store
        if helper:
            found = await run_helper(helper, host)
            if found is not None:
                return found
            log.debug("%s%s has no credentials for %s", HELPER_PREFIX, helper, host)
        return parsed.auths.get(host)


__all__ = ["IDENTITY_TOKEN_USER", "CredentialSource", "Credentials", "DockerConfig",
           "StaticCredentials", "config_host", "default_docker_config", "load_docker_config",
           "parse_docker_config", "run_helper"]
