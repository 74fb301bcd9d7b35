"""Config parsing: defaults, file values, flags over the file, and errors naming file and key."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from content.chunkbudget import Limits
from content.errors import InvalidArgument
from snapfs.cli import main
from snapfs.config import (
    TOP_LEVEL,
    Config,
    ConfigError,
    default_config,
    load_config,
    parse_config,
    sections,
    with_overrides,
)
from snapfs.lazy.open import cache_limits, fetch_options, fuse_server_spawn
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
concurrency = 4
background = false
background_rate = "1.5MiB"

[verify]
toc = "warn"
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
    assert (c.fetch.concurrency, c.fetch.background, c.fetch.background_rate) == (
        4, False, "1.5MiB")
    assert fetch_options(c).background_rate == 1_572_864 and c.verify.toc == "warn"


def test_socket_follows_state_unless_set() -> None:
    c = parse_config('state = "/run/other"', "x.toml", default_config(rootless=False))
    assert c.socket == Path("/run/other/snapfs.sock")


@pytest.mark.parametrize("section", sorted(sections()))
def test_an_unknown_key_in_any_section_is_an_error_naming_file_section_and_key(
        section: str) -> None:
    text = f"[{section}]\nfuture_knob = 1\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml", default_config(rootless=False))
    message = str(info.value)
    assert message.startswith(f"x.toml: [{section}] future_knob: unknown key (known: ")
    assert "\n" not in message and "--permissive" in message


def test_cri_section() -> None:
    c = parse_config('state = "/run/x"\n[cri]\nenable = true\nupstream = "unix:///c.sock"',
                     "x.toml", default_config(rootless=False))
    assert (c.cri.enable, c.cri_socket, c.cri.upstream) == (True, Path("/run/x/cri.sock"),
                                                            "unix:///c.sock")
    c = parse_config('[cri]\nsocket = "unix:///run/k/cri.sock"', "x.toml")
    assert (c.cri.enable, c.cri_socket) == (False, Path("/run/k/cri.sock"))
    with pytest.raises(ConfigError, match=r"x\.toml: cri\.enable: want"):
        parse_config('[cri]\nenable = "yes"', "x.toml")
    with pytest.raises(ConfigError, match=r"x\.toml: cri\.upstream: .*empty"):
        parse_config('[cri]\nenable = true\nupstream = ""', "x.toml")


@pytest.mark.parametrize(("text", "message"), [
    ('[plugins.x]\ny = "z"\n', r"^x\.toml: \[plugins\]: unknown section \(known: grpc, "),
    ("future = 1\n", r"^x\.toml: future: unknown top-level key \(known: root, state\)"),
    ("[fetch.more]\nx = 1\n", r"^x\.toml: \[fetch\] more: unknown key"),
])
def test_unknown_sections_and_top_level_keys_are_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "x.toml", default_config(rootless=False))


def test_permissive_turns_unknown_names_into_one_warning_each(
        caplog: pytest.LogCaptureFixture) -> None:
    text = 'future = 1\n[grpc]\nmax_recv = 5\n[plugins.x]\ny = "z"\n[fetch]\nconcurrency = 3\n'
    c = parse_config(text, "x.toml", default_config(rootless=False), permissive=True)
    assert c.socket == Path("/run/snapfs/snapfs.sock") and c.fetch.concurrency == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.split(" (known")[0] for w in warnings] == [
        "x.toml: future: unknown top-level key", "x.toml: [grpc] max_recv: unknown key",
        "x.toml: [plugins]: unknown section"]
    with pytest.raises(ConfigError, match=r"fetch\.concurrency: want an integer"):
        parse_config('[fetch]\nconcurrency = "3"\n', "x.toml", permissive=True)


@pytest.mark.parametrize(("text", "message"), [
    ("root = 5", r"x\.toml: root: want a string, got int 5"),
    ('[grpc]\naddress = ["a"]', r"x\.toml: grpc\.address: want a string, got list"),
    ('grpc = "sock"', r"x\.toml: \[grpc\]: want a table, got str"),
    ('[fetch]\nconcurrency = "x"', r"^x\.toml: fetch\.concurrency: want an integer, got str 'x'$"),
    ("[fetch]\nconcurrency = 0", r"^x\.toml: fetch\.concurrency: 0 must be greater than 0$"),
    ("[fetch]\nconcurrency = true", r"fetch\.concurrency: want an integer, got bool True"),
    ("[fetch]\nbackground = 1", r"fetch\.background: want true or false, got int 1"),
    ('[fetch]\nbackground_rate = "fast"', r"fetch\.background_rate: 'fast' want bytes per"),
    ("[fetch]\nbackground_rate = 1.5", r"background_rate: want an integer or a string"),
    ('[fetch]\nlazy = "maybe"', r"^x\.toml: fetch\.lazy: 'maybe' is not one of auto, required$"),
    ('[verify]\ntoc = "maybe"', r"^x\.toml: verify\.toc: 'maybe' is not one of require, warn$"),
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
    monkeypatch.setattr("snapfs.config.parse.default_config_path", lambda: tmp_path / "absent.toml")
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
    assert err == f"snapfs serve: {bad}: metrics.address: want a string, got int 9100"
    assert main(["serve", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "nope.toml: config file not found" in capsys.readouterr().err


def contrib_settings() -> dict[tuple[str, str], str]:
    """(section, key) → the TOML value text of each ``#key = value`` line of contrib/config.toml
    (a setting: no space after '#'; prose comments have one)."""
    example = Path(__file__).parents[2] / "contrib" / "config.toml"
    found: dict[tuple[str, str], str] = {}
    section = ""
    for line in example.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line[:2].strip("#").isalpha() and "=" in line:
            key, value = line[1:].split("=", 1)
            assert (section, key.strip()) not in found, f"{line!r} twice"
            found[(section, key.strip())] = value.strip()
    return found


def test_contrib_example_shows_every_key_with_its_real_default() -> None:
    example = Path(__file__).parents[2] / "contrib" / "config.toml"
    parse_config(example.read_text(), str(example))  # as shipped, all commented out
    defaults = default_config(rootless=False)
    schema = {("", key) for key in TOP_LEVEL} | {
        (name, f.name) for name, cls in sections().items() for f in dataclasses.fields(cls)}
    settings = contrib_settings()
    assert set(settings) == schema  # every key the schema knows, and nothing else
    for (section, key), text in settings.items():
        shown = tomllib.loads(f"v = {text}")["v"]
        if section:
            default = getattr(getattr(defaults, section), key)
            assert shown == default and type(shown) is type(default), (section, key)
        else:
            assert Path(shown) == getattr(defaults, key), key
    # Uncommented, the example is exactly the defaults (and parses: types fit).
    lines = [f"{s}.{k} = {v}" if s else f"{k} = {v}" for (s, k), v in settings.items()]
    assert parse_config("\n".join(lines), str(example), defaults) == defaults
    assert fetch_options(defaults) == FetchOptions()  # and the fetcher's own defaults agree
    spawn = fuse_server_spawn(defaults)  # the FUSE server gets the [fetch] read timeout
    assert spawn is not None and "--read-timeout" in spawn.argv
    assert spawn.argv[spawn.argv.index("--read-timeout") + 1] == "60.0"


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


def test_cache_limits_take_bytes_sizes_and_shares_of_the_filesystem(tmp_path: Path) -> None:
    base = default_config(rootless=False)
    c = parse_config(f'root = "{tmp_path}"\n[cache]\nmax_size = "10%"\nmin_free = "1MiB"\n',
                     "t", base)
    st = os.statvfs(tmp_path)
    assert cache_limits(c) == Limits(max_bytes=st.f_blocks * st.f_frsize // 10,
                                     min_free=1 << 20)
    c = parse_config("[cache]\nmax_size = 5000\n", "t", base)
    assert cache_limits(c) == Limits(max_bytes=5000)
    for bad in ('"150%"', '"lots"', "-1", "true"):
        with pytest.raises(InvalidArgument, match="max_size"):
            cache_limits(parse_config(f"[cache]\nmax_size = {bad}\n", "t", base))


def test_a_type_error_is_one_line_naming_file_and_key_via_the_cli_and_serve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[fetch]\nconcurrency = "x"\n')
    root, state = tmp_path / "root", tmp_path / "state"
    flags = ["--config", str(bad), "--root", str(root), "--state", str(state)]
    assert main(["images", *flags]) == 125
    line = f"{bad}: fetch.concurrency: want an integer, got str 'x'"
    assert capsys.readouterr().err == f"snapfs: {line}\n"
    assert main(["serve", *flags]) == 1
    assert capsys.readouterr().err == f"snapfs serve: {line}\n"
    assert not root.exists() and not state.exists()  # refused before touching anything


def test_permissive_flag_via_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    newer = tmp_path / "newer.toml"
    newer.write_text("[fetch]\nfuture_knob = 1\n[future]\nsize = 1\n")
    flags = ["--config", str(newer), "--root", str(tmp_path / "root"),
             "--state", str(tmp_path / "state"), "--address", str(tmp_path / "none.sock")]
    assert main(["images", *flags]) == 125
    assert capsys.readouterr().err.startswith(
        f"snapfs: {newer}: [fetch] future_knob: unknown key (known: prepare_timeout, ")
    for argv in (["--permissive", "images", *flags], ["images", "--permissive", *flags]):
        caplog.clear()
        assert main(argv) == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert [w.split(" (known")[0] for w in warnings] == [
            f"{newer}: [fetch] future_knob: unknown key", f"{newer}: [future]: unknown section"]


def test_lazy_policy_from_the_file_and_the_flag() -> None:
    c = parse_config('[fetch]\nlazy = "required"\n', "x.toml", default_config(rootless=False))
    assert fetch_options(c).lazy_required
    assert not fetch_options(with_overrides(c, lazy="auto")).lazy_required
    assert fetch_options(with_overrides(default_config(), lazy="required")).lazy_required
    with pytest.raises(ConfigError, match=r"^command line: fetch\.lazy: 'always' is not one of"):
        with_overrides(c, lazy="always")
