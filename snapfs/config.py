"""The daemon's configuration: a TOML file in containerd's style, then command-line flags.

    root = "/var/lib/snapfs"          # snapshots, content, metadata
    state = "/run/snapfs"             # sockets and other runtime state
    [grpc]     address = "/run/snapfs/snapfs.sock"
    [debug]    level = "info"
    [metrics]  address = ""           # host:port; empty = off
    [registry] config_path = ""       # containerd certs.d directory
               docker_config = ""     # credentials; "" = $DOCKER_CONFIG/config.json or ~/.docker
               connect_timeout = 5.0  # seconds per connection attempt
               read_timeout = 30.0    # seconds without a byte from a registry
    [cri]      enable = false         # kubelet's image service through snapfs (its creds)
               socket = ""            # "" = <state>/cri.sock
               upstream = "/run/containerd/containerd.sock"   # containerd's CRI socket
    [fetch]    ...                    # owned by the fetcher; kept raw in ``sections``

Unknown keys and sections are accepted (logged) so a newer config file works with an older
daemon; a known key with the wrong type is an error naming the file, the key and the reason.
Without root the defaults move to ``$XDG_RUNTIME_DIR/snapfs`` and ``~/.local/share/snapfs``.

Must not create or change files or directories: it reads one TOML file and resolves paths.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapfs.errors import InvalidArgument

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")
SOCKET_NAME = "snapfs.sock"
CRI_SOCKET_NAME = "cri.sock"


class ConfigError(InvalidArgument):
    """A config file that cannot be read or holds a value of the wrong type."""


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    address: str = ""  # empty: <state>/snapfs.sock


@dataclass(frozen=True, slots=True)
class DebugConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = ""  # host:port; empty turns the endpoint off


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    config_path: str = ""  # containerd's certs.d layout (<dir>/<host>/hosts.toml)
    docker_config: str = ""  # a docker config.json; "" = docker's own default (see below)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

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
class CriConfig:
    """The optional CRI image-service proxy (``snapfs.daemon.cri_proxy``)."""

    enable: bool = False
    socket: str = ""  # empty: <state>/cri.sock
    upstream: str = "/run/containerd/containerd.sock"


@dataclass(frozen=True, slots=True)
class Config:
    root: Path
    state: Path
    grpc: GrpcConfig = GrpcConfig()
    debug: DebugConfig = DebugConfig()
    metrics: MetricsConfig = MetricsConfig()
    registry: RegistryConfig = RegistryConfig()
    cri: CriConfig = CriConfig()
    # Sections this module does not own (e.g. [fetch]), as parsed, for their owners to read.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

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
    if rootless is None:
        rootless = is_rootless()
    if not rootless:
        return Config(root=Path("/var/lib/snapfs"), state=Path("/run/snapfs"))
    home = Path.home()
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/snapfs-{os.geteuid()}"
    return Config(root=data / "snapfs", state=Path(runtime) / "snapfs")


def default_config_path(rootless: bool | None = None) -> Path:
    if rootless is None:
        rootless = is_rootless()
    if not rootless:
        return Path("/etc/snapfs/config.toml")
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "snapfs" / "config.toml"


# The schema of the keys this module owns: section → key → type ("" = top level).
_SCHEMA: dict[str, dict[str, type]] = {
    "": {"root": str, "state": str},
    "grpc": {"address": str},
    "debug": {"level": str},
    "metrics": {"address": str},
    "registry": {"config_path": str, "docker_config": str, "connect_timeout": float,
                 "read_timeout": float},
    "cri": {"enable": bool, "socket": str, "upstream": str},
}
_SECTION_TYPES: dict[str, type] = {
    "grpc": GrpcConfig, "debug": DebugConfig, "metrics": MetricsConfig, "registry": RegistryConfig,
    "cri": CriConfig,
}


def _typed(source: str, key: str, value: Any, want: type) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # TOML writes 5 for 5.0
    if not isinstance(value, want):
        raise ConfigError(
            f"{source}: {key}: expected {want.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def parse_config(text: str, source: str = "<config>", base: Config | None = None) -> Config:
    """Parse TOML ``text`` over ``base`` (the defaults); ``source`` names it in errors."""
    config = base or default_config()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None

    top: dict[str, Any] = {}
    sections: dict[str, Mapping[str, Any]] = dict(config.sections)
    for key, value in doc.items():
        if key in _SECTION_TYPES:
            section = _typed(source, f"[{key}]", value, dict)
            kwargs = {}
            for sub, subvalue in section.items():
                want = _SCHEMA[key].get(sub)
                if want is None:
                    log.warning("%s: [%s] %s: unknown key, ignored", source, key, sub)
                    continue
                kwargs[sub] = _typed(source, f"{key}.{sub}", subvalue, want)
            top[key] = dataclasses.replace(getattr(config, key), **kwargs)
        elif key in _SCHEMA[""]:
            top[key] = Path(_typed(source, key, value, str))
        elif isinstance(value, dict):
            sections[key] = value
        else:
            log.warning("%s: %s: unknown key, ignored", source, key)
    config = dataclasses.replace(config, sections=sections, **top)
    validate(config, source)
    return config


def validate(config: Config, source: str) -> None:
    if config.debug.level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"{source}: debug.level: {config.debug.level!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    for key, path in (("root", config.root), ("state", config.state)):
        if not path.is_absolute():
            raise ConfigError(f"{source}: {key}: {str(path)!r} is not an absolute path")
    for key in ("connect_timeout", "read_timeout"):
        seconds = getattr(config.registry, key)
        if not seconds > 0:
            raise ConfigError(f"{source}: registry.{key}: {seconds!r} is not a positive number "
                              "of seconds")
    if config.cri.enable and not config.cri.upstream:
        raise ConfigError(f"{source}: cri.upstream: empty; name containerd's socket")
    address = config.metrics.address
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{source}: metrics.address: {address!r} is not host:port")


def load_config(path: Path | None, *, base: Config | None = None) -> Config:
    """The config from ``path``, or from the default file if ``path`` is None.

    An explicitly named file must exist; a missing default file just means the defaults.
    """
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
    return parse_config(text, str(file), base)


def with_overrides(config: Config, **flags: Any) -> Config:
    """Apply command-line flags (None = not given) over ``config``, then re-validate.

    Flags: root, state, address (gRPC socket), metrics_address, log_level.
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
    validate(c, "command line")
    return c
