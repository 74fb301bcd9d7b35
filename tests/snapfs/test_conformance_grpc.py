"""The conformance suite (tests/snapfs/conformance.py) through a real daemon's socket.

Every case runs against ``SnapshotsClient`` talking to ``snapfs serve``, so the wire
translation (mounts, infos, labels, timestamps, field masks, error codes) is held to the
same checks as the in-process snapshotter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from snapfs.snapshot.types import Snapshots
from snapfs.sys.mountinfo import is_mounted, mount_points
from tests.fixtures.daemon import SnapfsDaemon
from tests.snapfs.conformance import CASES


@pytest.fixture
async def grpc_snapshotter(snapfs_daemon: SnapfsDaemon) -> AsyncIterator[Snapshots]:
    async with snapfs_daemon.client() as client:
        yield client


@pytest.mark.parametrize("case", list(CASES))
async def test_conformance_through_the_socket(
    grpc_snapshotter: Snapshots, snapfs_daemon: SnapfsDaemon, tmp_path: Path, case: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # The daemon's own FUSE mount (its standby server's, until the daemon stops) is not one
    # a case made; every other mount under tmp_path is.
    daemons = str(snapfs_daemon.root / "fuse")
    try:
        await CASES[case](grpc_snapshotter, work)
    finally:
        left = [p for p in mount_points() if p.startswith(str(tmp_path)) and p != daemons]
        assert not left, f"mounts left behind: {left}"
        assert not is_mounted(work)
