"""The daemon's configuration: a TOML file in containerd's style, then command-line flags.

    root = "/var/lib/snapfs"          # snapshots, content, metadata
    state = "/run/snapfs"             # sockets and other runtime state
    [grpc] [debug] [metrics] [registry] [cri] [fetch] [fuse] [cache] [verify] [profile] [unpack]

``contrib/config.toml`` shows every key with its default and what it does (a test holds it
to those dataclasses).

The one schema is in :mod:`snapfs.config.sections`: each section is a frozen dataclass, and a
field of :class:`Config` with the section's name; its checks are in
:mod:`snapfs.config.checks`, the reader in :mod:`snapfs.config.parse`. Its fields'
annotations are the keys' types (``str``, ``bool``, ``int``, ``float``, unions of them,
``tuple[str, ...]`` for arrays); ``field(metadata=check(f))`` adds a check returning the
reason a value is refused. Adding a section is adding its dataclass and the field; the parser,
``contrib/config.toml``'s test and the error messages follow from them.

The file fails loudly: an unknown section or key, a value of the wrong type or out of range,
is a :class:`ConfigError` of one line naming the file, the section and the key.
``permissive=True`` (``snapfs --permissive``: a file written for a newer snapfs) turns
unknown sections and keys into one warning line each; a known key's bad value stays an error.
Without root the defaults move to ``$XDG_RUNTIME_DIR/snapfs`` (``/tmp/snapfs-<uid>/snapfs``
without it) and ``$XDG_DATA_HOME/snapfs`` (``~/.local/share/snapfs``).

Must not create or change files or directories: it reads one TOML file and resolves paths.
"""

from snapfs.config.checks import Check, ConfigError, check
from snapfs.config.parse import load_config, parse_config, validate, with_overrides
from snapfs.config.sections import (
    CRI_SOCKET_NAME,
    LAZY_POLICIES,
    LOG_LEVELS,
    SOCKET_NAME,
    TOC_POLICIES,
    TOP_LEVEL,
    CacheConfig,
    Config,
    CriConfig,
    DebugConfig,
    FetchConfig,
    FuseConfig,
    GrpcConfig,
    MetricsConfig,
    ProfileConfig,
    RegistryConfig,
    UnpackConfig,
    VerifyConfig,
    default_config,
    default_config_path,
    is_rootless,
    sections,
)

__all__ = [
    "CRI_SOCKET_NAME", "LAZY_POLICIES", "LOG_LEVELS", "SOCKET_NAME", "TOC_POLICIES", "TOP_LEVEL",
    "CacheConfig", "Check", "Config", "ConfigError", "CriConfig", "DebugConfig", "FetchConfig",
    "FuseConfig", "GrpcConfig", "MetricsConfig", "ProfileConfig", "RegistryConfig",
    "UnpackConfig", "VerifyConfig", "check", "default_config", "default_config_path",
    "is_rootless", "load_config", "parse_config", "sections", "validate", "with_overrides",
]
