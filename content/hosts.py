"""Registry endpoints for a host, from containerd's ``certs.d/<host>/hosts.toml``.

    server = "https://registry.example.com"
    [host."https://mirror.example.com"]
      capabilities = ["pull", "resolve"]
      skip_verify = false
      ca = "/etc/certs/mirror.pem"
      client = [["/etc/certs/client.cert", "/etc/certs/client.key"]]
      override_path = false
      [host."https://mirror.example.com".header]
        x-custom = "1"

Mirrors come first, in file order, then the server. Without a file the server is
``https://<host>`` (``https://registry-1.docker.io`` for docker.io), except loopback hosts,
which Docker and containerd reach over plain http.

A key this module does not know is one warning line naming the file and the key (once per
file and key: hosts.toml is read for every resolution), then ignored — as containerd itself
ignores it, so a file shared with containerd, or written for a newer one, still works.

Must not make requests: it only resolves which endpoints to try, and how.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from content.errors import InvalidArgument

PULL = "pull"
RESOLVE = "resolve"
PUSH = "push"
ALL_CAPABILITIES: frozenset[str] = frozenset({PULL, RESOLVE, PUSH})
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
HOST_KEYS = frozenset({"capabilities", "skip_verify", "ca", "client", "header", "override_path"})
TOP_KEYS = HOST_KEYS | {"server", "host"}

log = logging.getLogger(__name__)
# (file, key) pairs already warned about: hosts.toml is re-read for every resolution, and
# one line per mistake is enough. Grows only with distinct mistakes in distinct files.
_warned: set[tuple[str, str]] = set()


def _warn_unknown(source: str, where: str, table: Mapping[str, Any], known: frozenset[str]
                  ) -> None:
    for key in table:
        if key not in known and (source, f"{where}{key}") not in _warned:
            _warned.add((source, f"{where}{key}"))
            log.warning("%s: %s%s: unknown hosts.toml key, ignored (known: %s)", source, where,
                        key, ", ".join(sorted(known)))


@dataclass(frozen=True, slots=True)
class RegistryHost:
    url: str  # scheme://netloc[/path], no trailing slash
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()  # (cert, key) pairs; key "" when in the cert file
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def api_base(self) -> str:
        """The URL the ``/<name>/manifests/...`` paths hang off (``.../v2`` unless overridden)."""
        if self.override_path or self.url.endswith("/v2"):
            return self.url
        return self.url + "/v2"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    else:
        name = name.rsplit(":", 1)[0]
    return name == "localhost" or name.startswith("127.") or name == "::1"


def default_server(host: str, *, insecure: bool = False) -> str:
    if host == "docker.io":
        return DOCKER_HUB_SERVER
    scheme = "http" if insecure or is_loopback(host) else "https"
    return f"{scheme}://{host}"


def _normalise_url(where: str, url: str) -> str:
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(f"{where}: invalid URL {url!r}: want http(s)://host[:port][/path]")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidArgument(f"{where}: want a string or a list of strings, got {value!r}")


def _client_pairs(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        return ((value, ""),)
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: want a path, a list of paths or [cert, key] pairs")
    out: list[tuple[str, str]] = []
    for item in value:
        if isinstance(item, str):
            out.append((item, ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
            out.append((item[0], item[1]))
        else:
            raise InvalidArgument(f"{where}: invalid client entry {item!r}")
    return tuple(out)


def _host_entry(where: str, url: str, table: Mapping[str, Any]) -> RegistryHost:
    raw_caps = table.get("capabilities", sorted(ALL_CAPABILITIES))
    caps = frozenset(_strings(f"{where} capabilities", raw_caps))
    unknown = caps - ALL_CAPABILITIES
    if unknown:
        raise InvalidArgument(
            f"{where} capabilities: unknown {sorted(unknown)} (want pull, resolve, push)"
        )
    skip = table.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise InvalidArgument(f"{where} skip_verify: want true or false, got {skip!r}")
    override = table.get("override_path", False)
    if not isinstance(override, bool):
        raise InvalidArgument(f"{where} override_path: want true or false, got {override!r}")
    headers: list[tuple[str, str]] = []
    raw_headers = table.get("header", {})
    if not isinstance(raw_headers, dict):
        raise InvalidArgument(f"{where} header: want a table, got {raw_headers!r}")
    for name, value in raw_headers.items():
        headers.extend((name, v) for v in _strings(f"{where} header.{name}", value))
    return RegistryHost(
        url=_normalise_url(where, url),
        capabilities=caps,
        skip_verify=skip,
        ca=_strings(f"{where} ca", table["ca"]) if "ca" in table else (),
        client=_client_pairs(f"{where} client", table["client"]) if "client" in table else (),
        headers=tuple(headers),
        override_path=override,
    )


def parse_hosts_toml(host: str, text: str, source: str = "hosts.toml", *,
                     insecure: bool = False) -> list[RegistryHost]:
    """The endpoints a hosts.toml describes for ``host``: mirrors in file order, then the server."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{source}: invalid TOML: {exc}") from None
    _warn_unknown(source, "", doc, TOP_KEYS)
    hosts: list[RegistryHost] = []
    mirrors = doc.get("host", {})
    if not isinstance(mirrors, dict):
        raise InvalidArgument(f"{source}: key 'host': want tables [host.\"<url>\"]")
    for url, table in mirrors.items():
        if not isinstance(table, dict):
            raise InvalidArgument(f"{source}: key host.{url!r}: want a table")
        _warn_unknown(source, f"host.{url!r} ", table, HOST_KEYS)
        hosts.append(_host_entry(f"{source}: host.{url!r}", url, table))
    server = doc.get("server", default_server(host, insecure=insecure))
    if not isinstance(server, str):
        raise InvalidArgument(f"{source}: key 'server': want a URL string, got {server!r}")
    hosts.append(_host_entry(f"{source}: server", server, doc))
    return hosts


def load_hosts(host: str, hosts_dir: Path | None, *, insecure: bool = False) -> list[RegistryHost]:
    """Ordered endpoints for ``host`` (``domain[:port]`` of a reference)."""
    if hosts_dir is not None:
        for name in (host, host.replace(":", "_"), "_default"):
            path = hosts_dir / name / "hosts.toml"
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise InvalidArgument(f"{path}: cannot read: {exc.strerror}") from None
            return parse_hosts_toml(host, text, str(path), insecure=insecure)
    return [RegistryHost(url=default_server(host, insecure=insecure), skip_verify=insecure)]

