"""The config schema: one frozen dataclass per ``[section]``, :class:`Config` holding them,
and the defaults for root and rootless use (see :mod:`snapfs.config`)."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from snapfs.config.checks import (
    check,
    host_port,
    non_negative,
    one_of,
    positive,
    rate,
    size_or_share,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
TOC_POLICIES = ("require", "warn")
LAZY_POLICIES = ("auto", "required")  # required: no full pull when FUSE cannot be served
SOCKET_NAME = "snapfs.sock"
CRI_SOCKET_NAME = "cri.sock"


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    address: str = ""  # empty: <state>/snapfs.sock


@dataclass(frozen=True, slots=True)
class DebugConfig:
    level: str = field(default="info", metadata=check(lambda v: one_of(*LOG_LEVELS)(v.lower())))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = field(default="", metadata=check(host_port))  # host:port; "" = off


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    config_path: str = ""  # containerd's certs.d layout (<dir>/<host>/hosts.toml)
    docker_config: str = ""  # a docker config.json; "" = docker's own default (see below)
    connect_timeout: float = field(default=5.0, metadata=check(positive))
    read_timeout: float = field(default=30.0, metadata=check(positive))

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
    prepare_timeout: float = field(default=30.0, metadata=check(positive))
    concurrency: int = field(default=8, metadata=check(positive))
    background: bool = True
    background_rate: int | str = field(default=0, metadata=check(rate))  # bytes/s or "50MB"
    background_concurrency: int = field(default=2, metadata=check(positive))
    release_interval: float = field(default=10.0, metadata=check(positive))
    # Compressed bytes of following chunks an on-demand miss fetches along at first (then
    # adapted to what is read); 0 = off. snapfs.lazy.locality.START_WINDOW.
    window: int | str = field(default=262144, metadata=check(rate))
    lazy: str = field(default="auto", metadata=check(one_of(*LAZY_POLICIES)))
    # For background_hold seconds after a mount, background pieces wait for background_pause
    # seconds without on-demand requests (snapfs.lazy.scheduler).
    background_pause: float = field(default=0.3, metadata=check(non_negative))
    background_hold: float = field(default=5.0, metadata=check(non_negative))
    # Seconds a lazy read waits for the registry (or a restarting daemon); then EIO, once.
    read_timeout: float = field(default=60.0, metadata=check(positive))


@dataclass(frozen=True, slots=True)
class FuseConfig:
    # Serve lazy layers from `snapfs fuse-server`, a process that outlives the daemon's
    # restarts (snapfs.lazy.open.fuse_server_spawn).
    server: bool = True


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # The chunk cache's bounds, bytes ("20GB") or a share of its filesystem ("10%");
    # 0 = unbounded. Read by snapfs.lazy.open.cache_limits.
    max_size: int | str = field(default=0, metadata=check(size_or_share))
    min_free: int | str = field(default=0, metadata=check(size_or_share))


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    toc: str = field(default="require", metadata=check(one_of(*TOC_POLICIES)))


@dataclass(frozen=True, slots=True)
class ProfileConfig:  # [profile]: startup profiles (snapfs.lazy.profiles.profile_options)
    record: bool = True
    record_seconds: float = field(default=10.0, metadata=check(positive))
    use: bool = True
    lookup_timeout: float = field(default=2.0, metadata=check(positive))
    wait: float = field(default=5.0, metadata=check(non_negative))


@dataclass(frozen=True, slots=True)
class UnpackConfig:  # [unpack]: the native pull's bounds (snapfs.app.pull); 0 = off
    max_expansion: float = field(default=100.0, metadata=check(non_negative))
    max_size: int | str = field(default="64GiB", metadata=check(rate))
    parallel_downloads: int = field(default=3, metadata=check(positive))


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
