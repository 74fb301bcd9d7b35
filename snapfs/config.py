"""The daemon's configuration: a TOML file in containerd's style, then command-line flags.

    root = "/var/lib/snapfs"          # snapshots, content, metadata
    state = "/run/snapfs"             # sockets and other runtime state
    [grpc] [debug] [metrics] [registry] [cri] [fetch] [fuse] [cache] [verify] [profile] [unpack]

``contrib/config.toml`` shows every key with its default and what it does (a test holds it
to the dataclasses below).

This module holds the one schema: each section is a frozen dataclass below, and a field of
:class:`Config` with the section's name. Its fields' annotations are the keys' types
(``str``, ``bool``, ``int``, ``float``, unions of them, ``tuple[str, ...]`` for arrays);
``field(metadata=check(f))`` adds a check returning the reason a value is refused. Adding a
section is adding its dataclass and the field; the parser, ``contrib/config.toml``'s test and
the error messages follow from them.

The file fails loudly: an unknown section or key, a value of the wrong type or out of range,
is a :class:`ConfigError` of one line naming the file, the section and the key.
``permissive=True`` (``snapfs --permissive``: a file written for a newer snapfs) turns
unknown sections and keys into one warning line each; a known key's bad value stays an error.
Without root the defaults move to ``$XDG_RUNTIME_DIR/snapfs`` (``/tmp/snapfs-<uid>/snapfs``
without it) and ``$XDG_DATA_HOME/snapfs`` (``~/.local/share/snapfs``).

Must not create or change files or directories: it reads one TOML file and resolves paths.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapfs.errors import InvalidArgument
from snapfs.sys.units import parse_rate

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")
TOC_POLICIES = ("require", "warn")
LAZY_POLICIES = ("auto", "required")  # required: no full pull when FUSE cannot be served
SOCKET_NAME = "snapfs.sock"
CRI_SOCKET_NAME = "cri.sock"


class ConfigError(InvalidArgument):
    """A config file that cannot be read, or holds an unknown key or a bad value."""


Check = Callable[[Any], "str | None"]  # the reason a value is refused, or None


def check(fn: Check) -> dict[str, Check]:
    """Field metadata attaching ``fn`` to a key: ``field(default=1, metadata=check(_positive))``."""
    return {"check": fn}


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"is not one of {', '.join(choices)}"


def _host_port(value: Any) -> str | None:
    host, sep, port = value.rpartition(":")
    if value and (not sep or not host or not port.isdigit() or int(port) > 65535):
        return "is not host:port"
    return None


def _rate(value: Any) -> str | None:
    try:
        parse_rate(value)
    except InvalidArgument as exc:
        return str(exc).removeprefix("rate: ")
    return None


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _size_or_share(value: Any) -> str | None:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1])
        except ValueError:
            return "is not a percentage"
        return None if 0 <= share <= 100 else "must be from 0% to 100%"
    return _rate(value)


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    address: str = ""  # empty: <state>/snapfs.sock


@dataclass(frozen=True, slots=True)
class DebugConfig:
    level: str = field(default="info", metadata=check(lambda v: _one_of(*LOG_LEVELS)(v.lower())))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = field(default="", metadata=check(_host_port))  # host:port; "" = off


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    config_path: str = ""  # containerd's certs.d layout (<dir>/<host>/hosts.toml)
    docker_config: str = ""  # a docker config.json; "" = docker's own default (see below)
    connect_timeout: float = field(default=5.0, metadata=check(_positive))
    read_timeout: float = field(default=30.0, metadata=check(_positive))

    def hosts_dir(self) -> Path | None:
        return Path(self.config_path) if self.config_path else None

    def docker_config_path(self) -> Path:
        """``docker_config``, else ``$DOCKER_CONFIG/config.json``, else
        ``~/.docker/config.json`` (of the user running snapfs)."""
        if self.docker_config:
            return Path(self.docker_config)
        base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
        return Path(base) / "config.json"


@dataclass(frozen=True, slots=True)
class CriConfig:  # the optional CRI image-service proxy (snapfs.daemon.cri_proxy)
    enable: bool = False
    socket: str = ""  # empty: <state>/cri.sock
    upstream: str = field(default="/run/containerd/containerd.sock",
                          metadata=check(lambda v: None if v else "empty; name containerd's"))


@dataclass(frozen=True, slots=True)
class FetchConfig:  # read by snapfs.lazy.open.fetch_options (see there for the meaning)
    prepare_timeout: float = field(default=30.0, metadata=check(_positive))
    concurrency: int = field(default=8, metadata=check(_positive))
    background: bool = True
    background_rate: int | str = field(default=0, metadata=check(_rate))  # bytes/s or "50MB"
    background_concurrency: int = field(default=2, metadata=check(_positive))
    release_interval: float = field(default=10.0, metadata=check(_positive))
    # Compressed bytes of following chunks an on-demand miss fetches along at first (then
    # adapted to what is read); 0 = off. snapfs.lazy.locality.START_WINDOW.
    window: int | str = field(default=262144, metadata=check(_rate))
    lazy: str = field(default="auto", metadata=check(_one_of(*LAZY_POLICIES)))
    # For background_hold seconds after a mount, background pieces wait for background_pause
    # seconds without on-demand requests (snapfs.lazy.scheduler).
    background_pause: float = field(default=0.3, metadata=check(_non_negative))
    background_hold: float = field(default=5.0, metadata=check(_non_negative))
    # Seconds a lazy read waits for the registry (or a restarting daemon); then EIO, once.
    read_timeout: float = field(default=60.0, metadata=check(_positive))


@dataclass(frozen=True, slots=True)
class FuseConfig:
    # Serve lazy layers from `snapfs fuse-server`, a process that outlives the daemon's
    # restarts (snapfs.lazy.open.fuse_server_spawn).
    server: bool = True


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # The chunk cache's bounds, bytes ("20GB") or a share of its filesystem ("10%");
    # 0 = unbounded. Read by snapfs.lazy.open.cache_limits.
    max_size: int | str = field(default=0, metadata=check(_size_or_share))
    min_free: int | str = field(default=0, metadata=check(_size_or_share))


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    toc: str = field(default="require", metadata=check(_one_of(*TOC_POLICIES)))


@dataclass(frozen=True, slots=True)
class ProfileConfig:  # [profile]: startup profiles (snapfs.lazy.profiles.profile_options)
    record: bool = True
    record_seconds: float = field(default=10.0, metadata=check(_positive))
    use: bool = True
    lookup_timeout: float = field(default=2.0, metadata=check(_positive))
    wait: float = field(default=5.0, metadata=check(_non_negative))


@dataclass(frozen=True, slots=True)
class UnpackConfig:  # [unpack]: the native pull's bounds (snapfs.app.pull); 0 = off
    max_expansion: float = field(default=100.0, metadata=check(_non_negative))
    max_size: int | str = field(default="64GiB", metadata=check(_rate))
    parallel_downloads: int = field(default=3, metadata=check(_positive))


@dataclass(frozen=True, slots=True)
class Config:
    root: Path
    state: Path
    # One field per [section], named as the section (the parser finds them here).
    grpc: GrpcConfig = GrpcConfig()
    debug: DebugConfig = DebugConfig()
    metrics: MetricsConfig = MetricsConfig()
    registry: RegistryConfig = RegistryConfig()
    cri: CriConfig = CriConfig()
    fetch: FetchConfig = FetchConfig()
    fuse: FuseConfig = FuseConfig()
    cache: CacheConfig = CacheConfig()
    verify: VerifyConfig = VerifyConfig()
    profile: ProfileConfig = ProfileConfig()
    unpack: UnpackConfig = UnpackConfig()

    @property
    def socket(self) -> Path:
        """The gRPC socket path (``[grpc] address``, else ``<state>/snapfs.sock``)."""
        address = self.grpc.address.removeprefix("unix://").removeprefix("unix:")
        return Path(address) if address else self.state / SOCKET_NAME

    @property
    def cri_socket(self) -> Path:
        """The CRI proxy's socket (``[cri] socket``, else ``<state>/cri.sock``)."""
        address = self.cri.socket.removeprefix("unix://").removeprefix("unix:")
        return Path(address) if address else self.state / CRI_SOCKET_NAME


def is_rootless() -> bool:
    return os.geteuid() != 0


def default_config(rootless: bool | None = None) -> Config:
    rootless = is_rootless() if rootless is None else rootless
    if not rootless:
        return Config(root=Path("/var/lib/snapfs"), state=Path("/run/snapfs"))
    home = Path.home()
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/snapfs-{os.geteuid()}"
    return Config(root=data / "snapfs", state=Path(runtime) / "snapfs")


def default_config_path(rootless: bool | None = None) -> Path:
    rootless = is_rootless() if rootless is None else rootless
    if not rootless:
        return Path("/etc/snapfs/config.toml")
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "snapfs" / "config.toml"


TOP_LEVEL = ("root", "state")  # absolute paths


def sections() -> dict[str, type]:
    """Section name → its dataclass: every field of :class:`Config` past the top-level keys."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name not in TOP_LEVEL}


_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}


def _describe(want: Any) -> str:
    if typing.get_origin(want) is tuple:
        return f"a list of {_describe(typing.get_args(want)[0]).removeprefix('a ')}s"
    if isinstance(want, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(want))
    return _NAMES.get(want, getattr(want, "__name__", str(want)))


def _coerce(value: Any, want: Any) -> tuple[bool, Any]:
    """(fits, value as the field holds it) for a TOML value and a field annotation."""
    if isinstance(want, types.UnionType):
        for option in typing.get_args(want):
            fits, out = _coerce(value, option)
            if fits:
                return True, out
        return False, value
    if typing.get_origin(want) is tuple:
        if not isinstance(value, list):
            return False, value
        items = [_coerce(v, typing.get_args(want)[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if isinstance(value, bool) != (want is bool):
        return False, value  # TOML's true is no integer, and 1 is no boolean
    if want is float and isinstance(value, int):
        return True, float(value)  # TOML writes 5 for 5.0
    return isinstance(value, want), value


def _value(source: str, key: str, value: Any, want: Any, fn: Check | None) -> Any:
    fits, out = _coerce(value, want)
    if not fits:
        raise ConfigError(f"{source}: {key}: want {_describe(want)}, got "
                          f"{type(value).__name__} {value!r}")
    reason = fn(out) if fn is not None else None
    if reason is not None:
        raise ConfigError(f"{source}: {key}: {out!r} {reason}")
    return out


def _unknown(source: str, what: str, known: Any, permissive: bool) -> None:
    message = f"{source}: {what} (known: {', '.join(known)})"
    if not permissive:
        raise ConfigError(f"{message}; --permissive ignores it")
    log.warning("%s, ignored", message)


def _section(source: str, name: str, table: Any, current: Any, permissive: bool) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}]: want a table, got {type(table).__name__} "
                          f"{table!r}")
    hints = typing.get_type_hints(type(current))
    fields = {f.name: f for f in dataclasses.fields(current)}
    changes = {}
    for key, value in table.items():
        if key not in fields:
            _unknown(source, f"[{name}] {key}: unknown key", fields, permissive)
            continue
        changes[key] = _value(source, f"{name}.{key}", value, hints[key],
                              fields[key].metadata.get("check"))
    return dataclasses.replace(current, **changes)


def parse_config(text: str, source: str = "<config>", base: Config | None = None, *,
                 permissive: bool = False) -> Config:
    """Parse TOML ``text`` over ``base`` (the defaults); ``source`` names it in errors."""
    config = base or default_config()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    known = sections()
    changes: dict[str, Any] = {}
    for key, value in doc.items():
        if key in known:
            changes[key] = _section(source, key, value, getattr(config, key), permissive)
        elif key in TOP_LEVEL:
            changes[key] = Path(_value(source, key, value, str, None))
        elif isinstance(value, dict):
            _unknown(source, f"[{key}]: unknown section", known, permissive)
        else:
            _unknown(source, f"{key}: unknown top-level key", TOP_LEVEL, permissive)
    config = dataclasses.replace(config, **changes)
    validate(config, source)
    return config


def validate(config: Config, source: str) -> None:
    """Every field's own check (values set by flags too), and absolute root and state."""
    for key in TOP_LEVEL:
        path: Path = getattr(config, key)
        if not path.is_absolute():
            raise ConfigError(f"{source}: {key}: {str(path)!r} is not an absolute path")
    for name in sections():
        current = getattr(config, name)
        for f in dataclasses.fields(current):
            fn = f.metadata.get("check")
            reason = fn(getattr(current, f.name)) if fn is not None else None
            if reason is not None:
                raise ConfigError(f"{source}: {name}.{f.name}: {getattr(current, f.name)!r} "
                                  f"{reason}")


def load_config(path: Path | None, *, base: Config | None = None,
                permissive: bool = False) -> Config:
    """The config from ``path`` (which must exist), else from the default file if any."""
    explicit = path is not None
    file = path if path is not None else default_config_path()
    try:
        text = file.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file}: config file not found") from None
        return base or default_config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc}") from None
    return parse_config(text, str(file), base, permissive=permissive)


def with_overrides(config: Config, **flags: Any) -> Config:
    """Apply command-line flags (None = not given) over ``config``, then re-validate.

    Flags: root, state, address (gRPC socket), metrics_address, log_level, lazy.
    """
    c = config
    if flags.get("root") is not None:
        c = dataclasses.replace(c, root=Path(flags["root"]).absolute())
    if flags.get("state") is not None:
        c = dataclasses.replace(c, state=Path(flags["state"]).absolute())
    if flags.get("address") is not None:
        c = dataclasses.replace(c, grpc=GrpcConfig(address=str(flags["address"])))
    if flags.get("metrics_address") is not None:
        c = dataclasses.replace(c, metrics=MetricsConfig(address=str(flags["metrics_address"])))
    if flags.get("log_level") is not None:
        c = dataclasses.replace(c, debug=DebugConfig(level=str(flags["log_level"])))
    if flags.get("lazy") is not None:
        c = dataclasses.replace(c, fetch=dataclasses.replace(c.fetch, lazy=str(flags["lazy"])))
    validate(c, "command line")
    return c
