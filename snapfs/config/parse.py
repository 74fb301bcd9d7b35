"""Reading the config: TOML text over the defaults, each key checked against the schema
(:mod:`snapfs.config.sections`), then command-line flags over it."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from snapfs.config.checks import Check, ConfigError
from snapfs.config.sections import (
    TOP_LEVEL,
    Config,
    DebugConfig,
    GrpcConfig,
    MetricsConfig,
    default_config,
    default_config_path,
    sections,
)

log = logging.getLogger(__name__)

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
