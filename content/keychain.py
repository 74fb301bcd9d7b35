"""Credentials handed over per image repository, kept in memory only (kubelet's, through CRI).

    Keychain  {(host, repository) → Credentials}    recorded by the CRI proxy on each PullImage
       │ asked first
    FirstOf(keychain, DockerConfig)                 what the daemon's registry client asks

kubelet resolves an image's pull secrets and sends them in ``PullImage``; containerd uses them
for that pull only, and a proxy snapshotter never sees them. The daemon's CRI proxy
(``snapfs.daemon.cri_proxy``) records them here before it forwards the call, so the lazy
fetcher, which keeps reading the image's layers long after the pull, authenticates as kubelet
did (stargz-snapshotter and SOCI call this the CRI keychain). Each pull replaces the entry of
its repository (a pull without credentials removes it: config.json applies again).

A record is bound to the registry host of the image reference and to its repository: a
request to another host, or for another repository, never gets it (a mirror in hosts.toml
with another host name gets that host's config.json credentials instead).

Must not write credentials anywhere (no file, no log line, no repr): they live in this
process's memory and are gone on restart.
"""

from __future__ import annotations

import threading

from content.credentials import Credentials, CredentialSource, config_host

__all__ = ["FirstOf", "Keychain"]


class Keychain:
    """The table; safe to use from grpcio's handler threads and the trio loop alike (the
    lock is held only for a dict operation, never across an await)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[tuple[str, str], Credentials] = {}

    def record(self, host: str, repository: str, credentials: Credentials | None) -> None:
        """Credentials for ``host``/``repository`` from now on; None forgets them."""
        key = (config_host(host), repository)
        with self._lock:
            if credentials is None:
                self._table.pop(key, None)
            else:
                self._table[key] = credentials

    def lookup(self, host: str, repository: str) -> Credentials | None:
        with self._lock:
            return self._table.get((config_host(host), repository))

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    async def get(self, host: str, repository: str = "") -> Credentials | None:
        return self.lookup(host, repository) if repository else None


class FirstOf:
    """The first source that has credentials for the request wins."""

    def __init__(self, *sources: CredentialSource) -> None:
        self._sources = sources

    async def get(self, host: str, repository: str = "") -> Credentials | None:
        for source in self._sources:
            found = await source.get(host, repository)
            if found is not None:
                return found
        return None
