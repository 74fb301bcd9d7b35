"""Leases: what a pull in flight holds, seen by a GC in another process; a dead holder's
lease is stale and removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from content.leases import LEASES_DIR, active_leases, open_lease

HOLD = """
import sys, time
from pathlib import Path
from content.leases import open_lease
with open_lease(Path(sys.argv[1])) as lease:
    lease.add(content=["sha256:aa"], snapshots=["chain-1"])
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lease_is_seen_while_held_and_gone_after(tmp_path: Path) -> None:
    assert active_leases(tmp_path).leases == 0
    with open_lease(tmp_path) as lease:
        lease.add(content=["sha256:aa", "sha256:bb"])
        lease.add(snapshots=["chain-1"])
        seen = active_leases(tmp_path)
        assert (seen.content, seen.snapshots, seen.leases) == (
            {"sha256:aa", "sha256:bb"}, {"chain-1"}, 1)
    assert active_leases(tmp_path).leases == 0
    assert list((tmp_path / LEASES_DIR).iterdir()) == []


def test_another_process_lease_counts_until_it_dies(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        seen = active_leases(tmp_path)
        assert (seen.content, seen.snapshots) == ({"sha256:aa"}, {"chain-1"})
    finally:
        proc.kill()
        proc.wait()
    # Killed without ending its lease: the lock went with it, so the lease is stale.
    assert len(list((tmp_path / LEASES_DIR).iterdir())) == 1
    assert active_leases(tmp_path).leases == 0
    assert list((tmp_path / LEASES_DIR).iterdir()) == []
