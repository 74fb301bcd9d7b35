"""Sizes and rates as people write them in config files and flags: ``50MB``, ``1.5 MiB/s``.

Pure; must not import anything of snapfs but ``snapfs.errors``.
"""

from __future__ import annotations

import re

from snapfs.errors import InvalidArgument

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_rate(value: object, what: str = "rate") -> int:
    """Bytes per second from an integer or a size string: ``"50MB"``, ``"1.5 MiB/s"``, ``"800k"``.

    Decimal units (k, M, G: powers of 1000) unless ``i`` says binary; 0 means unlimited. Pure.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: want bytes per second, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidArgument(f"{what}: want a non-negative rate, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = _RATE.match(value)
        if m is not None:
            number, unit, binary, _ = m.groups()
            base = 1024 if binary else 1000
            return int(float(number) * base ** _UNITS[unit.lower()])
    raise InvalidArgument(f"{what}: want bytes per second such as 50000000 or \"50MB\", got "
                          f"{value!r}")


__all__ = ["parse_rate"]
