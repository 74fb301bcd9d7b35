"""The README's main-job command: ``snapfs demo`` builds, converts, lazily pulls and runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snapfs.sys.mountinfo import mount_points
from tests.fixtures.realenv import need, need_binary, need_root

SNAPFS = str(Path(sys.executable).parent / "snapfs")


def test_demo_pulls_lazily_runs_and_reports() -> None:
    need_root("the demo mounts FUSE and overlayfs")
    need(Path("/dev/fuse").exists(), "/dev/fuse")
    need_binary("docker-registry", "/usr/bin/docker-registry")
    need_binary("runc")
    before = _demo_mounts()
    res = subprocess.run([SNAPFS, "demo", "--json"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "hello from a lazily pulled container" in res.stdout
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["exit_status"] == 0
    assert report["lazy_layers"] == 1
    # The container reads a few small files: most of the image is never fetched.
    assert 0 < report["fetched_bytes"] < report["image_bytes"] / 4
    assert _demo_mounts() - before == set()


def _demo_mounts() -> set[str]:
    return {p for p in mount_points() if "snapfs-demo-" in p}
