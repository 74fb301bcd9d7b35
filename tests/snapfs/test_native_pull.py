"""The native pull, bounded and self-cleaning, through the real CLI (embedded and daemon):
a decompression bomb is refused with nothing of it left, a SIGKILL of ``snapfs pull`` at a
byte count (early, mid-download, mid-unpack) is followed by a re-pull that succeeds and
leaves no partial extraction, and a connection reset in mid-blob is retried."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from content.tarlayer import Entry
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import WAIT, SnapfsCli

short_dir = test_cli_run.short_dir
snapfs_cli = test_cli_run.snapfs_cli


def _files(seed: str, size: int) -> list[Entry]:
    rnd = os.urandom(size)  # incompressible: the blob is about as big as the tar
    return [Entry(path="data", type="dir", mode=0o755),
            Entry(path=f"data/{seed}.bin", type="file", data=rnd, mode=0o644),
            Entry(path=f"data/{seed}.txt", type="file", data=seed.encode(), mode=0o644)]


def _leftovers(cli: SnapfsCli, names: list[str]) -> list[str]:
    """What is on disk that no committed snapshot explains: extract-* records, dirs."""
    out = [n for n in names if n.startswith("extract-")]
    snapdirs = sorted(p.name for p in (cli.root / "snapshots").iterdir())
    out += [d for d in snapdirs if not d.isdigit()]  # new-*, rm-*
    committed = [n for n in names if not n.startswith("extract-")]
    if len(snapdirs) > len(committed):
        out.append(f"{len(snapdirs)} snapshot dirs for {len(committed)} snapshots")
    return out


async def test_a_decompression_bomb_is_refused_and_nothing_stays(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, tmp_path: Path) -> None:
    zeros = [Entry(path="zeros", type="file", data=bytes(8 << 20), mode=0o644)]
    pushed = await image_factory.push(registry, repo_name, [_files("base", 1000), zeros])
    config = tmp_path / "config.toml"
    config.write_text('[unpack]\nmax_size = "4MiB"\n')
    res = await snapfs_cli("pull", "-q", "--config", str(config), str(pushed.ref))
    assert res.status != 0
    bomb = pushed.image.layers[1].descriptor().digest
    assert str(bomb) in res.stderr and "max_expansion" in res.stderr, res.stderr
    names = await snapfs_cli.snapshots()
    assert len(names) == 1  # the first layer, committed; the bomb's snapshot went
    assert _leftovers(snapfs_cli, names) == []
    # Raising the limit lets it through: the refusal was the limit, not the image.
    config.write_text('[unpack]\nmax_size = "64MiB"\n')
    await snapfs_cli.ok("pull", "-q", "--config", str(config), str(pushed.ref))


@pytest.mark.parametrize("kill_at", [0, 1_500_000, 4_500_000])
async def test_a_killed_pull_leaves_nothing_that_stops_the_next(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, fault_proxy: Callable[..., FaultProxy], kill_at: int) -> None:
    # Three 2 MB layers: 0 bytes = before any blob byte; 1.5 MB = inside the first blob;
    # 4.5 MB = inside the third, while the first two are downloaded and being unpacked.
    proxy = fault_proxy(registry.url, stall_after=kill_at)
    pushed = await image_factory.push(
        proxy, repo_name, [_files(f"l{i}", 2_000_000) for i in range(3)])
    proc = await snapfs_cli.start("pull", "-q", str(pushed.ref), stdout=subprocess.DEVNULL)
    with trio.fail_after(WAIT):
        await trio.to_thread.run_sync(proxy.stalled.wait, WAIT)
    assert proxy.stalled.is_set()
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    proxy.stall_after = None
    proxy.release.set()
    await snapfs_cli.ok("pull", "-q", str(pushed.ref))
    names = await snapfs_cli.snapshots()
    assert len(names) == 3 and _leftovers(snapfs_cli, names) == []
    assert list((snapfs_cli.root / "content" / "ingest").iterdir()) == []


async def test_a_reset_in_mid_blob_does_not_fail_the_pull(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url, reset_after=0, reset_times=2)
    pushed = await image_factory.push(proxy, repo_name, [_files("r", 1_000_000)])
    proxy.reset_times = 2  # the push went through the proxy too: count the pull's only
    await snapfs_cli.ok("pull", "-q", str(pushed.ref))
    assert proxy.reset_times == 0
    assert len(await snapfs_cli.snapshots()) == 1
