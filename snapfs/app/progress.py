"""Pull progress for people: one updating status line on a terminal, plain lines in a pipe.

Pipe form, one line per layer event, then a summary (stable, for logs and tests)::

    pulling 127.0.0.1:5000/app:1 (2 layers, 1.2 MiB)
    sha256:0123456789ab: downloading    1.1 MiB
    sha256:0123456789ab: downloaded     1.1 MiB  (3.4 MiB/s)
    sha256:0123456789ab: done           1.1 MiB
    pulled 127.0.0.1:5000/app:1: 2/2 layers, 1.2 MiB fetched in 0.4s (3.0 MiB/s)

On a terminal the same events rewrite one line: ``layers 1/2  1.1 MiB  3.4 MiB/s``.

``snapfs convert`` reports through the same class (``verbs=("converting", "converted")``):
``downloaded``, then ``converted`` or ``copied`` per layer.

Must not decide anything about a pull: it only renders what ``snapfs.app.pull`` reports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from content.descriptor import Descriptor

FINAL_STATES = ("exists", "lazy", "done", "converted", "copied")  # last word on a layer


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class PullProgress:
    """Implements :class:`snapfs.app.pull.Progress`; ``quiet`` prints nothing."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False,
                 tty: bool | None = None, verbs: tuple[str, str] = ("pulling", "pulled")) -> None:
        out = sys.stderr if out is None else out  # the current one, not the one at import
        self._out = out
        self._verbs = verbs  # ("converting", "converted") for snapfs convert
        self._quiet = quiet
        self._tty = out.isatty() if tty is None else tty
        self._started = time.monotonic()
        self._name = ""
        self._total = 0
        self._finished: set[str] = set()
        self._fetched = 0

    def _rate(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return f"{human_bytes(self._fetched / elapsed)}/s"

    def image(self, name: str, layers: Sequence[Descriptor]) -> None:
        self._name, self._total = name, len(layers)
        self._started = time.monotonic()
        if not self._quiet and not self._tty:
            size = human_bytes(sum(d.size for d in layers))
            self._write(f"{self._verbs[0]} {name} ({len(layers)} layers, {size})\n")

    def layer(self, desc: Descriptor, state: str, done: int = 0) -> None:
        if state == "downloaded":
            self._fetched += done
        if state in FINAL_STATES:
            self._finished.add(str(desc.digest))
        if self._quiet:
            return
        if self._tty:
            self._write(f"\r\x1b[K{self._name}: layers {len(self._finished)}/{self._total}  "
                        f"{human_bytes(self._fetched)}  {self._rate()}  ({state} "
                        f"{desc.digest.short()})")
            return
        line = f"{desc.digest.short()}: {state:<11} {human_bytes(desc.size):>10}"
        if state == "downloaded":
            line += f"  ({self._rate()})"
        self._write(line + "\n")

    def finish(self) -> None:
        """The summary line, after a pull that completed."""
        if self._quiet:
            return
        elapsed = time.monotonic() - self._started
        clear = "\r\x1b[K" if self._tty else ""
        self._write(f"{clear}{self._verbs[1]} {self._name}: "
                    f"{len(self._finished)}/{self._total} layers, {human_bytes(self._fetched)} "
                    f"fetched in {elapsed:.1f}s ({self._rate()})\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
