"""Kernel overlayfs stacked on FUSE layer directories, as snapshots mount them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from snapfs.fuse import Entry
from tests.fixtures.realenv import need, need_binary
from tests.snapfs.fuse_memlayer import blocking, mem_layer, need_fuse, open_mounted


def _overlay_supported() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "overlay" for line in f if line.strip())


@asynccontextmanager
async def overlay(lowers: list[Path], upper: Path, work: Path, merged: Path, *,
                  userxattr: bool) -> AsyncIterator[Path]:
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if userxattr:
        opts += ",userxattr"
    await trio.run_process(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)])
    try:
        yield merged
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process(["umount", str(merged)], check=False)


@pytest.mark.parametrize("userxattr", [False, True], ids=["trusted", "userxattr"])
async def test_overlay_on_fuse_layers_applies_whiteouts_and_opaque_dirs(
    tmp_path: Path, userxattr: bool
) -> None:
    need_fuse()
    need_binary("mount")
    need(_overlay_supported(), "overlayfs in /proc/filesystems")
    base = mem_layer("base", [
        (Entry("bin/tool", "reg", 0o755), b"#!/bin/sh\necho base\n"),
        (Entry("etc/gone", "reg", 0o644), b"deleted upstairs\n"),
        (Entry("etc/kept", "reg", 0o644), b"kept\n"),
        (Entry("var/cache/old1", "reg", 0o644), b"old1\n"),
        (Entry("var/cache/old2", "reg", 0o644), b"old2\n"),
    ])
    top = mem_layer("top", [
        (Entry("etc/", "dir", 0o755), b""),
        (Entry("etc/.wh.gone", "reg", 0o644), b""),
        (Entry("var/cache/", "dir", 0o755), b""),
        (Entry("var/cache/.wh..wh..opq", "reg", 0o644), b""),
        (Entry("var/cache/new", "reg", 0o644), b"new\n"),
    ], userxattr=userxattr)
    async with open_mounted(tmp_path / "fuse") as fs:
        lowers = [fs.add_layer(top), fs.add_layer(base)]  # leftmost = topmost
        async with overlay(lowers, tmp_path / "upper", tmp_path / "work",
                           tmp_path / "merged", userxattr=userxattr) as merged:
            assert await blocking(lambda: sorted(os.listdir(merged / "etc"))) == ["kept"]
            assert not await blocking((merged / "etc/gone").exists)
            assert await blocking(lambda: os.listdir(merged / "var/cache")) == ["new"]
            assert await blocking((merged / "bin/tool").read_bytes) == b"#!/bin/sh\necho base\n"
            # Writes go to the upper dir; copy-up reads the lower through FUSE.
            await blocking(lambda: (merged / "etc/kept").write_bytes(b"changed\n"))
            await blocking(lambda: (merged / "etc/added").write_bytes(b"added\n"))
            assert await blocking((tmp_path / "upper/etc/kept").read_bytes) == b"changed\n"
            assert await blocking((tmp_path / "upper/etc/added").read_bytes) == b"added\n"
            # The FUSE layer itself is unchanged.
            assert await blocking((lowers[1] / "etc/kept").read_bytes) == b"kept\n"
            assert fs.stats("base").requests["read"] >= 1
