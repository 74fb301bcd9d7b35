"""One small end-to-end run of ``python -m bench ttfr``: busybox only, one repetition.

It uses the real pieces (docker-registry, the shaper process, containerd, runc, snapfs,
stargz-snapshotter where it builds) and checks what a user of the benchmark gets: a JSON
file of the documented shape with real measurements for containerd's native path and for
every snapfs mode (a benchmark whose snapfs modes all fail is a broken benchmark, not a
result), stargz-snapshotter either measured or "unavailable: <reason>", every mode
accounted for, a PNG chart, and the markdown table. Modes are limited to one per kind to
keep it cheap; the start job only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.run import all_modes
from tests.fixtures.realenv import need_binary, need_root

REPO = Path(__file__).resolve().parents[2]
MODES = ("containerd-overlayfs", "stargz-snapshotter", "snapfs-containerd-estargz",
         "snapfs-containerd-zstdchunked", "snapfs-containerd-estargz-hot", "snapfs-run-estargz")
SNAPFS_MODES = [m for m in MODES if m.startswith("snapfs-")]


def test_busybox_one_rep_writes_json_chart_and_table(tmp_path: Path) -> None:
    need_root("the benchmark drops page caches and runs containerd")
    for binary in ("containerd", "ctr", "ctr-remote", "runc", "docker-registry", "busybox"):
        need_binary(binary)
    assert set(MODES) <= {m.name for m in all_modes()}
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "ttfr", "--images", "busybox", "--reps", "1",
         "--modes", ",".join(MODES), "--jobs", "start",
         "--rate", "1gbit", "--rtt", "2ms", "--rep-timeout", "60",
         "--workdir", str(tmp_path / "work"), "--results", str(results)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the benchmark then stops its daemons and removes its mounts.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]

    [json_path] = results.glob("*.json")
    [png_path] = results.glob("*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(json_path.read_text())
    assert result["reps"] == 1
    assert result["link"]["rate_bps"] == 1e9 and result["link"]["rtt_ms"] == 2
    assert result["machine"]["nproc"] == os.cpu_count()
    assert result["machine"]["kernel"] == os.uname().release

    assert len(result["source"]["commit"]) == 40 and result["source"]["dirty"] in (True, False)

    busybox = result["images"]["busybox"]
    assert list(busybox["modes"]) == list(MODES)
    for name, mode in busybox["modes"].items():
        assert mode["status"] in ("ok", "failed", "unavailable"), name
        if mode["status"] != "ok":
            assert mode["reason"], name  # never silently dropped, never without a why

    # containerd and every snapfs mode must have measured, or the benchmark is broken.
    for name in ("containerd-overlayfs", *SNAPFS_MODES):
        mode = busybox["modes"][name]
        assert mode["status"] == "ok", (name, mode)
        assert not mode["errors"], (name, mode["errors"])
        start = mode["workloads"]["start"]
        [sample] = start["samples"]
        assert sample["first_line"] == "ready", name
        assert 0 < sample["pull_s"] <= sample["ttfr_s"] <= sample["total_s"], name
        assert sample["time_s"] == sample["ttfr_s"] == start["summary"]["time_s"]["median"]
        [second] = mode["workloads"]["second-start"]["samples"]
        assert second["time_s"] == second["run_s"] > 0 and second["first_line"] == "ready"
        # The link counts what crossed it: at least the layer's compressed size.
        assert sample["bytes_fetched"] >= busybox["image_bytes"]["gzip"] * 0.9, name
    for name in SNAPFS_MODES:  # lazy: snapfs itself reports one layer and what it fetched
        split = busybox["modes"][name]["workloads"]["start"]["fetch_split"]
        assert split["layers"] == 1 and split["bytes_fetched"] > 0, (name, split)
    hot = busybox["modes"]["snapfs-containerd-estargz-hot"]["workloads"]
    assert hot["start-local"]["samples"][0]["first_line"] == "ready"
    assert busybox["ratios"]["start"]["snapfs-containerd-estargz"]["vs_containerd"] > 0

    stargz = busybox["modes"]["stargz-snapshotter"]
    assert stargz["status"] in ("ok", "unavailable"), stargz
    if stargz["status"] == "ok":  # it really mounted lazily, not a silent local unpack
        assert stargz["workloads"]["start"]["samples"][0]["fetch_split"]["fuse_mounts"] >= 1
        assert busybox["ratios"]["start"]["snapfs-containerd-estargz"]["vs_stargz"] > 0

    assert "native-overlayfs" in busybox["io"]
    assert busybox["io"]["native-overlayfs"]["cold"]["seq_bytes"] == (
        os.path.getsize(shutil.which("busybox") or "/bin/busybox"))

    # The table the lead pastes into the README, with the run's context.
    assert "| busybox | start | containerd-overlayfs |" in stdout
    assert "1000 Mbit/s, 2 ms RTT" in stdout
    for name, mode in busybox["modes"].items():
        if mode["status"] == "unavailable":
            assert f"| busybox | — | {name} | unavailable: " in stdout

    # Nothing left behind: no daemon of ours still running on the scratch paths.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
