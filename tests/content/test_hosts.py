from __future__ import annotations

from pathlib import Path

import pytest

from content.errors import InvalidArgument
from content.hosts import load_hosts, parse_hosts_toml


def write(tmp_path: Path, host: str, text: str) -> Path:
    d = tmp_path / host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(text)
    return tmp_path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    assert [h.url for h in load_hosts("docker.io", None)] == ["https://registry-1.docker.io"]
    assert [h.url for h in load_hosts("quay.io", tmp_path)] == ["https://quay.io"]
    assert [h.url for h in load_hosts("quay.io", None, insecure=True)] == ["http://quay.io"]
    for loopback in ("localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "localhost"):
        assert load_hosts(loopback, None)[0].url == f"http://{loopback}"
    only = load_hosts("example.com:5000", None)[0]
    assert only.can("pull") and only.can("resolve") and only.can("push")
    assert only.api_base == "https://example.com:5000/v2"


def test_mirrors_first_in_file_order_then_server(tmp_path: Path) -> None:
    hosts_dir = write(tmp_path, "registry.example.com:5000", '''
server = "https://registry.example.com:5000"

[host."https://mirror-b.example"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."https://mirror-b.example".header]
    x-token = "abc"
    x-multi = ["1", "2"]

[host."http://mirror-a.example:8080/prefix"]
  capabilities = ["pull"]
  ca = "/etc/ca.pem"
  client = [["/c.pem", "/k.pem"]]
  override_path = true

[host."mirror-c.example"]
''')
    hosts = load_hosts("registry.example.com:5000", hosts_dir)
    assert [h.url for h in hosts] == [
        "https://mirror-b.example", "http://mirror-a.example:8080/prefix",
        "https://mirror-c.example", "https://registry.example.com:5000"]
    b, a, c, server = hosts
    assert b.capabilities == {"pull", "resolve"} and b.skip_verify
    assert b.headers == (("x-token", "abc"), ("x-multi", "1"), ("x-multi", "2"))
    assert a.capabilities == {"pull"} and not a.can("resolve")
    assert a.ca == ("/etc/ca.pem",) and a.client == (("/c.pem", "/k.pem"),)
    assert a.api_base == "http://mirror-a.example:8080/prefix"
    assert c.capabilities == {"pull", "resolve", "push"}
    assert server.api_base == "https://registry.example.com:5000/v2"


def test_server_defaults_when_file_has_only_mirrors(tmp_path: Path) -> None:
    hosts_dir = write(tmp_path, "docker.io", '[host."http://127.0.0.1:9"]\n')
    assert [h.url for h in load_hosts("docker.io", hosts_dir)] == [
        "http://127.0.0.1:9", "https://registry-1.docker.io"]


def test_default_directory_applies_to_every_host(tmp_path: Path) -> None:
    hosts_dir = write(tmp_path, "_default", '[host."http://127.0.0.1:9"]\n')
    assert [h.url for h in load_hosts("quay.io", hosts_dir)] == [
        "http://127.0.0.1:9", "https://quay.io"]


@pytest.mark.parametrize(("text", "names"), [
    ("server = 3", ["'server'"]),
    ('[host."https://m"]\ncapabilities = ["pull", "fly"]', ["capabilities", "fly"]),
    ('[host."https://m"]\nskip_verify = "yes"', ["skip_verify"]),
    ('[host."ftp://m"]', ["ftp://m"]),
    ("server = [", ["invalid TOML"]),
    ('[host."https://m"]\nca = 3', ["ca"]),
])
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, names: list[str]) -> None:
    hosts_dir = write(tmp_path, "r.example", text)
    with pytest.raises(InvalidArgument) as info:
        load_hosts("r.example", hosts_dir)
    message = str(info.value)
    assert str(hosts_dir / "r.example" / "hosts.toml") in message
    for name in names:
        assert name in message


def test_parse_without_file_context() -> None:
    hosts = parse_hosts_toml("h", 'server = "http://127.0.0.1:5000"')
    assert [h.url for h in hosts] == ["http://127.0.0.1:5000"]


def test_unknown_keys_warn_once_naming_file_and_key(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # containerd ignores keys it does not know; so do we, but say so (once per file and key).
    hosts_dir = write(tmp_path, "example.com", '''
server = "https://example.com"
dial_timeout = "3s"
[host."https://mirror.example.com"]
  capabilities = ["pull"]
  skip_verfy = true
''')
    path = hosts_dir / "example.com" / "hosts.toml"
    for _ in range(3):
        hosts = load_hosts("example.com", hosts_dir)
    assert [h.url for h in hosts] == ["https://mirror.example.com", "https://example.com"]
    assert not hosts[0].skip_verify  # the misspelt key did nothing
    warnings = [r.getMessage().split(" (known")[0] for r in caplog.records
                if r.levelname == "WARNING"]
    assert warnings == [
        f"{path}: dial_timeout: unknown hosts.toml key, ignored",
        f"{path}: host.'https://mirror.example.com' skip_verfy: unknown hosts.toml key, ignored",
    ]
