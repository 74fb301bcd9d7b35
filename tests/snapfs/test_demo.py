"""The README's main-job command: ``snapfs demo`` builds, converts, lazily pulls and runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapfs.dev.demo import run_demo
from snapfs.errors import FailedPrecondition
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
    assert report["lazy_layers"] == 2  # busybox and the app layer, both eStargz
    # The container reads a few small files: most of the image is never fetched.
    assert 0 < report["fetched_bytes"] < report["image_bytes"] / 4
    assert "only the files the container read were fetched before it started" in res.stdout
    assert _demo_mounts() - before == set()


async def test_demo_without_fuse_says_it_pulled_in_full_or_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A /dev/fuse that cannot be opened: one warning line with the fix, a full pull, and a
    demo that says so; with lazy "required", one error instead. (As root /dev/fuse always
    opens, so the device path is pointed at a missing one: the only stand-in here.)"""
    need_root("the demo mounts overlayfs and runs runc")
    need_binary("docker-registry", "/usr/bin/docker-registry")
    need_binary("runc")
    monkeypatch.setattr("snapfs.fuse.session.DEV_FUSE", tmp_path / "no-fuse")
    out = io.StringIO()
    report = await run_demo(tmp_path / "auto", out)
    assert (report.exit_status, report.lazy_layers) == (0, 0)
    assert report.fetched_bytes >= report.image_bytes  # everything, before the start
    text = out.getvalue()
    assert "no layer was mounted lazily (see the warning above), so the whole image was " \
           "pulled before the container started: 10" in text
    assert "only the files" not in text
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and "lazy layers" in r.getMessage()]
    assert warnings == [f"lazy layers: cannot serve {tmp_path}/auto/root/fuse: {tmp_path}/"
                        "no-fuse: cannot open it (No such file or directory): load the fuse "
                        "module (modprobe fuse) or give the container /dev/fuse; pulling in "
                        "full instead"]
    with pytest.raises(FailedPrecondition, match=r"^lazy layers: cannot serve .*no-fuse: "
                       r"cannot open it .*; --lazy=required \(\[fetch\] lazy\) refuses a "
                       r"full pull$"):
        await run_demo(tmp_path / "required", io.StringIO(), lazy="required")
    assert not any(str(tmp_path) in m for m in mount_points())


def _demo_mounts() -> set[str]:
    return {p for p in mount_points() if "snapfs-demo-" in p}
