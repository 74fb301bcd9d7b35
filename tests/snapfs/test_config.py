"""Config parsing: defaults, file values, flags over the file, and errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfs.cli import main
from snapfs.config import (
    Config,
    ConfigError,
    default_config,
    load_config,
    parse_config,
    with_overrides,
)
from snapfs.lazy.open import fetch_options, fuse_server_spawn
from snapfs.lazy.schedule import FetchOptions

FULL = """
root = "/srv/snapfs"
state = "/run/snapfs-x"

[grpc]
address = "/run/snapfs-x/api.sock"

[debug]
level = "debug"

[metrics]
address = "127.0.0.1:9111"

[registry]
config_path = "/etc/snapfs/certs.d"

[fetch]
parallel = 4
prefetch = true
"""


def test_defaults_for_root_and_rootless(monkeypatch: pytest.MonkeyPatch) -> None:
    root = default_config(rootless=False)
    assert (root.root, root.state, root.socket) == (
        Path("/var/lib/snapfs"), Path("/run/snapfs"), Path("/run/snapfs/snapfs.sock"))
    assert root.metrics.address == "" and root.debug.level == "info"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    user = default_config(rootless=True)
    assert user.root == Path("/home/u/.local/share/snapfs")
    assert user.socket == Path("/run/user/1000/snapfs/snapfs.sock")


def test_every_key_is_read() -> None:
    c = parse_config(FULL, "x.toml", default_config(rootless=False))
    assert c.root == Path("/srv/snapfs") and c.state == Path("/run/snapfs-x")
    assert c.socket == Path("/run/snapfs-x/api.sock")
    assert c.debug.level == "debug"
    assert c.metrics.address == "127.0.0.1:9111"
    assert c.registry.config_path == "/etc/snapfs/certs.d"
    assert c.registry.docker_config_path() == Path("/root/.docker/config.json")
    assert (c.registry.connect_timeout, c.registry.read_timeout) == (5.0, 30.0)
    assert c.sections["fetch"] == {"parallel": 4, "prefetch": True}


def test_socket_follows_state_unless_set() -> None:
    c = parse_config('state = "/run/other"', "x.toml", default_config(rootless=False))
    assert c.socket == Path("/run/other/snapfs.sock")


def test_unknown_keys_and_sections_are_tolerated() -> None:
    c = parse_config('future = 1\n[grpc]\nmax_recv = 5\n[plugins.x]\ny = "z"\n', "x.toml",
                     default_config(rootless=False))
    assert c.socket == Path("/run/snapfs/snapfs.sock")
    assert c.sections["plugins"] == {"x": {"y": "z"}}


@pytest.mark.parametrize(("text", "message"), [
    ("root = 5", r"x\.toml: root: expected str, got int 5"),
    ('[grpc]\naddress = ["a"]', r"x\.toml: grpc\.address: expected str, got list"),
    ('grpc = "sock"', r"x\.toml: \[grpc\]: expected dict, got str"),
    ('[debug]\nlevel = "loud"', r"x\.toml: debug\.level: 'loud' is not one of"),
    ('[metrics]\naddress = "9100"', r"x\.toml: metrics\.address: '9100' is not host:port"),
    ('root = "relative/dir"', r"x\.toml: root: 'relative/dir' is not an absolute path"),
    ("root = [", r"x\.toml: not valid TOML"),
])
def test_bad_values_name_file_key_and_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "x.toml", default_config(rootless=False))


def test_flags_override_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(FULL)
    c = with_overrides(
        load_config(file), root="/a", address="/b.sock", metrics_address="", log_level="error",
        state=None,
    )
    assert c.root == Path("/a") and c.socket == Path("/b.sock")
    assert c.state == Path("/run/snapfs-x")  # not given: the file's
    assert c.metrics.address == "" and c.debug.level == "error"


def test_missing_default_file_is_fine_but_explicit_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("snapfs.config.default_config_path", lambda: tmp_path / "absent.toml")
    assert isinstance(load_config(None), Config)
    with pytest.raises(ConfigError, match=r"absent\.toml: config file not found"):
        load_config(tmp_path / "absent.toml")


def test_serve_with_bad_config_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[metrics]\naddress = 9100\n")
    assert main(["serve", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"snapfs serve: {bad}: metrics.address: expected str, got int 9100"
    assert main(["serve", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "nope.toml: config file not found" in capsys.readouterr().err


def test_contrib_example_parses_with_every_key_uncommented() -> None:
    example = Path(__file__).parents[2] / "contrib" / "config.toml"
    text = example.read_text()
    assert parse_config(text, str(example)) is not None
    seen: set[tuple[str, str]] = set()
    lines = []
    section = ""
    for line in text.splitlines():
        if line.startswith("[") or line.startswith("#["):
            section = line.lstrip("#").strip("[]")
        # "#key = value" (no space after '#') is a setting; the first per key is uncommented.
        key = line[1:].split("=")[0].strip()
        if line[:2].strip("#").isalpha() and "=" in line and (section, key) not in seen:
            seen.add((section, key))
            line = line[1:]
        lines.append(line)
    c = parse_config("\n".join(lines), str(example), default_config(rootless=False))
    assert {k for _, k in seen} == {
        "root", "state", "address", "level", "config_path", "docker_config",
        "connect_timeout", "read_timeout", "prepare_timeout", "concurrency", "background",
        "background_rate", "background_concurrency", "release_interval", "toc", "server",
    }
    assert len(seen) == 18  # read_timeout twice: [registry] and [fetch]
    assert fetch_options(c) == FetchOptions()  # the example shows the defaults
    spawn = fuse_server_spawn(c)
    assert spawn is not None and "--read-timeout" in spawn.argv
    assert spawn.argv[spawn.argv.index("--read-timeout") + 1] == "60.0"
    assert c.metrics.address == "127.0.0.1:9110"
    assert c.registry.config_path == "/etc/snapfs/certs.d"
    assert c.registry.docker_config_path() == Path("/root/.docker/config.json")
    assert (c.registry.connect_timeout, c.registry.read_timeout) == (5.0, 30.0)


def test_registry_keys_defaults_and_types(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    c = parse_config("[registry]\nconnect_timeout = 2\nread_timeout = 0.5\n", "x.toml",
                     default_config(rootless=False))
    assert (c.registry.connect_timeout, c.registry.read_timeout) == (2.0, 0.5)
    assert c.registry.docker_config_path() == tmp_path / "dc" / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert c.registry.docker_config_path() == tmp_path / ".docker" / "config.json"
    with pytest.raises(ConfigError, match=r"registry\.read_timeout"):
        parse_config("[registry]\nread_timeout = 0\n", "x.toml", default_config(rootless=False))
    with pytest.raises(ConfigError, match=r"registry\.connect_timeout"):
        parse_config('[registry]\nconnect_timeout = "5"\n', "x.toml",
                     default_config(rootless=False))
