"""The conformance suite (tests/snapfs/conformance.py) over every snapshotter path.

``snapshotter_under_test`` yields one ``Snapshots`` per param: "native" is the in-process
Snapshotter on a fresh root; a gRPC param (through the daemon's socket) is added next to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from snapfs.snapshot.snapshotter import Snapshotter
from snapfs.snapshot.types import Snapshots
from snapfs.sys.mountinfo import is_mounted, mount_points
from tests.snapfs.conformance import CASES, close_snapshotter


@pytest.fixture(params=["native"])
async def snapshotter_under_test(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Snapshots]:
    root = tmp_path / "root"
    sn = Snapshotter.open(root)
    try:
        yield sn
    finally:
        await close_snapshotter(sn)


@pytest.mark.parametrize("case", list(CASES))
async def test_conformance(snapshotter_under_test: Snapshots, tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    try:
        await CASES[case](snapshotter_under_test, work)
    finally:
        # Every case unmounts what it mounted, even on failure; hold it to that.
        left = [p for p in mount_points() if p.startswith(str(tmp_path))]
        assert not left, f"mounts left behind: {left}"
        assert not is_mounted(work)
