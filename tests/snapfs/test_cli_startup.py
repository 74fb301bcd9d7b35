"""``snapfs --help``, ``COMMAND --help``, ``ps``, ``images`` and ``status`` (through a
daemon) start without loading the heavy libraries: a behaviour check, not a timing one
(``python -m bench cli-startup`` measures the time).

Each command runs in a fresh interpreter that reports which of the heavy modules ended up in
``sys.modules``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from snapfs.cli import build_parser
from tests.fixtures.daemon import SnapfsDaemon

HEAVY = ("trio", "grpc", "httpx", "pyfuse3", "lmdb")
PROBE = """
import contextlib, io, json, sys
from snapfs.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    status = main(sys.argv[1:])
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def loaded(*argv: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return out


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_help_loads_no_heavy_library() -> None:
    assert loaded("--help") == []


@pytest.mark.parametrize("command", commands())
def test_command_help_loads_no_heavy_library(command: str) -> None:
    assert loaded(command, "--help") == []


def test_a_wrong_flag_loads_no_heavy_library() -> None:
    assert loaded("run", "--bogus", "x") == []


def test_ps_and_images_load_only_lmdb(tmp_path: Path) -> None:
    flags = ["--root", str(tmp_path / "root"), "--state", str(tmp_path / "state"),
             "--address", str(tmp_path / "none.sock")]
    assert loaded("ps", *flags) == []
    assert loaded("ps", "-a", *flags) == []
    assert loaded("images", *flags) == ["lmdb"]  # the image table is an LMDB


async def test_status_through_a_daemon_loads_no_heavy_library(
        snapfs_daemon: SnapfsDaemon) -> None:
    flags = ["--root", str(snapfs_daemon.root), "--state", str(snapfs_daemon.state),
             "--address", str(snapfs_daemon.address)]
    assert await trio.to_thread.run_sync(loaded, "status", "--json", *flags) == []


def test_constants_written_out_for_start_up_match_the_library() -> None:
    from content.chunkedtar import DEFAULT_CHUNK_SIZE
    from content.convert_layers import FORMATS
    from snapfs.app.imageops import PULL_POLICIES
    from snapfs.app.records import STOP_TIMEOUT
    from snapfs.cli import containers, convert, run

    assert (convert.FORMATS, convert.DEFAULT_CHUNK_SIZE) == (FORMATS, DEFAULT_CHUNK_SIZE)
    assert run.STOP_TIMEOUT == containers.STOP_TIMEOUT == STOP_TIMEOUT
    assert run.PULL_POLICIES == PULL_POLICIES
