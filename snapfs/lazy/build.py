"""Which build of snapfs a process runs: the FUSE server and its clients compare theirs.

An upgrade replaces the code on disk, but a ``snapfs fuse-server`` started before goes on
running the old code (it must: running containers read through it). Its ``hello`` says the
build it loaded, its clients compare it with their own (``snapfs.lazy.fuse_client``): an
older server that serves no layer is replaced at once; one that serves layers keeps them
(same protocol) and is named in the log until a SIGTERM drains it.

The build is a digest of the sources of the packages a server runs (``snapfs``,
``content``), read when first asked: the version string alone stays the same across the
commits of a checkout. Must not decide anything about servers.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import content
import snapfs


@cache
def code_build() -> str:
    """This process's build: ``<version>+<12 hex of its sources>`` (blocking, once)."""
    h = hashlib.sha256()
    for package in (snapfs, content):
        base = Path(package.__file__ or "").parent
        for path in sorted(base.rglob("*.py")):
            h.update(str(path.relative_to(base.parent)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return f"{snapfs.__version__}+{h.hexdigest()[:12]}"


__all__ = ["code_build"]
