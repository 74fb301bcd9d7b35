"""The startup-profile file: the paths a container read at startup, one per line.

``snapfs run --record-profile FILE`` writes it (``snapfs.lazy.profile`` records the paths);
``snapfs convert --prioritize FILE`` reads it (``content.convert`` puts those files first in
their layers). Any list of paths in this format serves as a prioritize file::

    # snapfs startup profile of 127.0.0.1:5000/app:1
    bin/busybox
    app/a

Paths are absolute or relative to the rootfs (normalised to relative); blank lines and
``#`` lines are skipped, duplicates dropped, escapes refused. Must not know how the paths
were recorded or what a converter does with them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import trio

from content.errors import InvalidArgument, NotFound
from content.toc import normalize_name


def parse_profile(text: str) -> list[str]:
    """The paths of a profile (or any prioritize file), in order. Pure."""
    out: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out[normalize_name(line, "prioritized file")] = None
    return [p for p in out if p]


def format_profile(paths: Sequence[str], *, image: str = "") -> str:
    """The profile file's text: a header comment, then one path per line. Pure."""
    header = "# snapfs startup profile" + (f" of {image}" if image else "")
    lines = [header, "# files read at startup, in order; for snapfs convert --prioritize"]
    return "\n".join([*lines, *paths]) + "\n"


async def read_profile(path: Path) -> list[str]:
    """The paths of the prioritize file ``path``; NotFound or InvalidArgument naming it."""
    try:
        text = await trio.Path(path).read_text()
    except FileNotFoundError:
        raise NotFound(f"prioritize file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"prioritize file {path}: cannot read it ({exc})") from None
    return parse_profile(text)


def write_profile(dest: Path, data: str | bytes) -> None:
    """Write ``data`` (a prioritize file's text, or a stored profile document) to ``dest``
    whole or not at all (blocking: call it from a thread)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["format_profile", "parse_profile", "read_profile", "write_profile"]
