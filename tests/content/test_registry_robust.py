"""A node's registry client when endpoints misbehave: silent and refusing mirrors, and TLS.

Real components: Debian's docker-registry (over http, or https with a certificate made here),
listening sockets this module owns, and ports nothing listens on. Counts are connections
accepted and requests made, never elapsed time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from content.descriptor import Descriptor, host_platform
from content.errors import Unavailable
from content.reference import parse_reference
from content.registry import open_registry
from tests.content.test_registry import push_image
from tests.fixtures.registry import RegistryServer, free_port
from tests.fixtures.tls import make_tls


class SilentServer:
    """Accepts TCP connections, holds them open, never sends a byte; counts accepts."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.host = self.url.split("://", 1)[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._held.append(conn)

    @property
    def accepts(self) -> int:
        """Connections made so far, counting any still in the listen backlog."""
        with self._lock:
            self._sock.setblocking(False)
            try:
                while True:
                    try:
                        self._held.append(self._sock.accept()[0])
                    except BlockingIOError:
                        break
            finally:
                self._sock.settimeout(0.05)
            return len(self._held)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def write_hosts(root: Path, name: str, text: str) -> Path:
    (root / "certs.d" / name).mkdir(parents=True, exist_ok=True)
    (root / "certs.d" / name / "hosts.toml").write_text(text)
    return root / "certs.d"


async def pushed_image(registry: RegistryServer, repo: str) -> tuple[Descriptor, bytes]:
    async with open_registry() as reg:
        return await push_image(reg, parse_reference(f"{registry.host}/{repo}:1"),
                                host_platform(), {"f": b"robust\n"})


async def test_a_silent_mirror_costs_one_connection_per_request(
        registry: RegistryServer, repo_name: str, tmp_path: Path,
        silent: SilentServer) -> None:
    pushed, layer = await pushed_image(registry, repo_name)
    hosts_dir = write_hosts(tmp_path, "silent.invalid", f'server = "{registry.url}"\n'
                            f'[host."{silent.url}"]\ncapabilities = ["pull", "resolve"]\n')
    async with open_registry(hosts_dir=hosts_dir, timeout=1.0, retries=4) as reg:
        ref = parse_reference(f"silent.invalid/{repo_name}:1")
        resolved = await reg.resolve(ref)
        assert resolved.descriptor.digest == pushed.digest
        assert silent.accepts == 1  # read timed out once, then straight to the registry
        assert reg.stats.by_host[registry.host] == 1
        assert reg.stats.retries == 0
        desc = Descriptor.from_json(resolved.manifest["layers"][0])
        assert await reg.fetch_blob(ref, desc) == layer
        assert silent.accepts == 2  # one per request, not one per retry
        assert reg.stats.retries == 0


async def test_a_silent_last_endpoint_is_still_retried(
        repo_name: str, tmp_path: Path, silent: SilentServer) -> None:
    async with open_registry(timeout=1.0, retries=1) as reg:
        with pytest.raises(Unavailable) as info:
            await reg.resolve(f"{silent.host}/{repo_name}:1")
    assert str(info.value) == f"registry {silent.host}: manifest {repo_name}:1: read timed out"
    assert silent.accepts == 2  # nothing follows it: the first try and one retry


async def test_a_refused_mirror_is_tried_once_per_request(
        registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    pushed, layer = await pushed_image(registry, repo_name)
    dead = f"127.0.0.1:{free_port()}"
    # The same refusing host twice (two paths): the second entry is skipped, not dialled.
    hosts_dir = write_hosts(tmp_path, "refused.invalid", f'server = "{registry.url}"\n'
                            f'[host."http://{dead}/a"]\n[host."http://{dead}/b"]\n')
    async with open_registry(hosts_dir=hosts_dir, retries=4) as reg:
        ref = parse_reference(f"refused.invalid/{repo_name}:1")
        resolved = await reg.resolve(ref)
        assert resolved.descriptor.digest == pushed.digest
        assert reg.stats.by_host[dead] == 1
        desc = Descriptor.from_json(resolved.manifest["layers"][0])
        assert await reg.fetch_blob(ref, desc) == layer
        assert reg.stats.by_host[dead] == 2
        assert reg.stats.by_host[registry.host] == 2
        assert reg.stats.retries == 0


async def test_tls_registry_with_ca_skip_verify_and_neither(
        registry_factory: Callable[..., RegistryServer], repo_name: str,
        tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    server = registry_factory(tls=tls)
    assert server.url.startswith("https://")
    hosts_dir = write_hosts(tmp_path, "ca.invalid", f'server = "{server.url}"\nca = "{tls.ca}"\n')
    write_hosts(tmp_path, "skip.invalid", f'server = "{server.url}"\nskip_verify = true\n')
    write_hosts(tmp_path, "plain.invalid", f'server = "{server.url}"\n')
    async with open_registry(hosts_dir=hosts_dir) as reg:
        pushed, _ = await push_image(reg, parse_reference(f"ca.invalid/{repo_name}:1"),
                                     host_platform(), {"f": b"over tls\n"})
        for name in ("ca.invalid", "skip.invalid"):
            resolved = await reg.resolve(f"{name}/{repo_name}:1")
            assert resolved.descriptor.digest == pushed.digest
        before = reg.stats.by_host[server.host]
        with pytest.raises(Unavailable) as info:
            await reg.resolve(f"plain.invalid/{repo_name}:1")
        assert reg.stats.by_host[server.host] == before + 1  # a bad certificate is not retried
    message = str(info.value)
    assert message.startswith(f"registry {server.host}: manifest {repo_name}:1: "
                              "TLS certificate verify failed: ")
    assert "unknown CA or self-signed (" in message and "\n" not in message


@pytest.mark.parametrize(("kind", "names", "expired", "says"), [
    ("expired", ("127.0.0.1",), True, "expired (certificate has expired)"),
    ("mismatch", ("registry.example",), False,
     "hostname mismatch (IP address mismatch, certificate is not valid for '127.0.0.1'.)"),
])
async def test_tls_certificate_problems_are_named(
        registry_factory: Callable[..., RegistryServer], repo_name: str, tmp_path: Path,
        kind: str, names: tuple[str, ...], expired: bool, says: str) -> None:
    tls = make_tls(tmp_path / "tls", names, expired=expired)
    server = registry_factory(tls=tls)
    hosts_dir = write_hosts(tmp_path, f"{kind}.invalid",
                            f'server = "{server.url}"\nca = "{tls.ca}"\n')
    async with open_registry(hosts_dir=hosts_dir) as reg:
        with pytest.raises(Unavailable) as info:
            await reg.resolve(f"{kind}.invalid/{repo_name}:1")
    message = str(info.value)
    assert message == (f"registry {server.host}: manifest {repo_name}:1: "
                       f"TLS certificate verify failed: {says}")
