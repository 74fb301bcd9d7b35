"""The config schema's value checks: each returns the reason a value is refused, or None."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from snapfs.errors import InvalidArgument
from snapfs.sys.units import parse_rate


class ConfigError(InvalidArgument):
    """A config file that cannot be read, or holds an unknown key or a bad value."""


Check = Callable[[Any], "str | None"]  # the reason a value is refused, or None


def check(fn: Check) -> dict[str, Check]:
    """Field metadata attaching ``fn`` to a key: ``field(default=1, metadata=check(positive))``."""
    return {"check": fn}


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"is not one of {', '.join(choices)}"


def host_port(value: Any) -> str | None:
    host, sep, port = value.rpartition(":")
    if value and (not sep or not host or not port.isdigit() or int(port) > 65535):
        return "is not host:port"
    return None


def rate(value: Any) -> str | None:
    try:
        parse_rate(value)
    except InvalidArgument as exc:
        return str(exc).removeprefix("rate: ")
    return None


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def size_or_share(value: Any) -> str | None:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1])
        except ValueError:
            return "is not a percentage"
        return None if 0 <= share <= 100 else "must be from 0% to 100%"
    return rate(value)
