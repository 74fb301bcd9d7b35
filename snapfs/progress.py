"""Pull progress for people: one updating line per layer on a terminal, plain lines in a pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from content.descriptor import Descriptor


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class PullProgress:
    """Implements :class:`snapfs.pull.Progress`; quiet unless ``verbose`` or on a terminal."""

    def __init__(self, out: TextIO = sys.stderr, *, quiet: bool = False) -> None:
        self._out = out
        self._quiet = quiet
        self._tty = out.isatty()
        self._started = time.monotonic()

    def layer(self, desc: Descriptor, state: str, done: int = 0) -> None:
        if self._quiet:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        line = f"{desc.digest.short()}: {state:<11} {human_bytes(desc.size):>10}"
        if state in ("downloaded", "done") and done:
            line += f"  ({human_bytes(done / elapsed)}/s)"
        self._out.write(line + "\n")
        self._out.flush()
