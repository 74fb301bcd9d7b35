"""One small end-to-end run of ``python -m bench ttfr``: busybox only, one repetition.

It uses the real pieces (docker-registry, the shaper process, containerd, runc, snapfs where
available) and checks what a user of the benchmark gets: a JSON file of the documented
shape with a real measurement for containerd's native path, every mode accounted for
(measured, failed or "unavailable: <reason>"), a PNG chart, and the markdown table.
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


def test_busybox_one_rep_writes_json_chart_and_table(tmp_path: Path) -> None:
    need_root("the benchmark drops page caches and runs containerd")
    for binary in ("containerd", "ctr", "runc", "docker-registry", "busybox"):
        need_binary(binary)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "ttfr", "--images", "busybox", "--reps", "1",
         "--rate", "1gbit", "--rtt", "2ms", "--rep-timeout", "20",
         "--workdir", str(tmp_path / "work"), "--results", str(results)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
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

    busybox = result["images"]["busybox"]
    assert set(busybox["modes"]) == {m.name for m in all_modes()}
    for name, mode in busybox["modes"].items():
        assert mode["status"] in ("ok", "failed", "unavailable"), name
        if mode["status"] != "ok":
            assert mode["reason"], name  # never silently dropped, never without a why

    native = busybox["modes"]["containerd-overlayfs"]
    assert native["status"] == "ok", native
    [sample] = native["samples"]
    assert sample["first_line"] == "ready"
    assert 0 < sample["pull_s"] <= sample["ttfr_s"] <= sample["total_s"]
    # The whole layer crossed the link: at least the gzip blob's size, counted at the proxy.
    assert sample["bytes_fetched"] >= busybox["image_bytes"]["gzip"]
    assert native["summary"]["ttfr_s"]["median"] == sample["ttfr_s"]

    assert "native-overlayfs" in busybox["io"]
    assert busybox["io"]["native-overlayfs"]["cold"]["seq_bytes"] == (
        os.path.getsize(shutil.which("busybox") or "/bin/busybox"))

    # The table the lead pastes into the README, with the run's context.
    assert "| busybox | containerd-overlayfs |" in stdout
    assert "1000 Mbit/s, 2 ms RTT" in stdout
    for name, mode in busybox["modes"].items():
        if mode["status"] == "unavailable":
            assert f"| busybox | {name} | unavailable: " in stdout

    # Nothing left behind: no daemon of ours still running on the scratch paths.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
