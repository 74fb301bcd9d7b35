"""Mount planning (pure) and performing (real bind/overlay mounts, root only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfs.errors import Internal
from snapfs.snapshot.mounting import mount_all
from snapfs.snapshot.mounts import (
    PAGE_SIZE,
    OverlayFeatures,
    compact_overlay,
    detect_overlay_features,
    snapshot_mounts,
)
from snapfs.snapshot.types import Kind, Mount
from snapfs.sys.mountinfo import is_mounted
from snapfs.sys.mountops import unmount, unmount_all
from tests.fixtures.realenv import need, need_root

S = Path("/r/snapshots")
NONE = OverlayFeatures()


def test_no_parent_is_a_bind() -> None:
    assert snapshot_mounts(Kind.ACTIVE, S / "1", [], NONE) == [
        Mount("bind", "/r/snapshots/1/fs", options=("rw", "rbind"))
    ]
    assert snapshot_mounts(Kind.VIEW, S / "1", [], NONE) == [
        Mount("bind", "/r/snapshots/1/fs", options=("ro", "rbind"))
    ]


def test_active_with_parents_is_overlay_leftmost_parent_first() -> None:
    feats = OverlayFeatures(index_off=True, userxattr=True)
    (m,) = snapshot_mounts(Kind.ACTIVE, S / "3", [S / "2" / "fs", S / "1" / "fs"], feats)
    assert m == Mount(
        "overlay",
        "overlay",
        options=(
            "index=off",
            "userxattr",
            "workdir=/r/snapshots/3/work",
            "upperdir=/r/snapshots/3/fs",
            "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",
        ),
    )


def test_views_of_one_and_many_parents() -> None:
    assert snapshot_mounts(Kind.VIEW, S / "3", [S / "2" / "fs"], NONE) == [
        Mount("bind", "/r/snapshots/2/fs", options=("ro", "rbind"))
    ]
    (m,) = snapshot_mounts(Kind.VIEW, S / "3", [S / "2" / "fs", S / "1" / "fs"], NONE)
    assert m.options == ("lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",)


def test_feature_detection(tmp_path: Path) -> None:
    idx = tmp_path / "index"
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0          0 4294967295\n")
    assert detect_overlay_features(idx, uid_map) == OverlayFeatures(False, False)
    idx.write_text("N\n")
    uid_map.write_text("         0       1000          1\n")
    assert detect_overlay_features(idx, uid_map) == OverlayFeatures(True, True)


def test_long_overlay_options_become_relative() -> None:
    root = Path("/var/lib/some/rather/long/path/to/the/snapfs/root/snapshots")
    lowers = [root / str(i) / "fs" for i in range(128, 0, -1)]
    (m,) = snapshot_mounts(Kind.ACTIVE, root / "200", lowers, OverlayFeatures(index_off=True))
    assert len(",".join(m.options)) > PAGE_SIZE
    compact, cwd = compact_overlay(m)
    assert cwd == root
    assert len(",".join(compact.options)) < PAGE_SIZE
    assert compact.options[:3] == ("index=off", "workdir=200/work", "upperdir=200/fs")
    assert compact.options[3].startswith("lowerdir=128/fs:127/fs:")
    short = Mount("overlay", "overlay", options=("lowerdir=/a:/b",))
    assert compact_overlay(short) == (short, None)


def need_mount() -> None:
    need_root("root, to mount")
    need("overlay" in Path("/proc/filesystems").read_text(), "overlayfs in the kernel")


async def test_bind_and_overlay_really_mount(tmp_path: Path) -> None:
    need_mount()
    lower, upper, work, target = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, work, target):
        d.mkdir()
    (lower / "a").write_text("from lower")
    m = Mount(
        "overlay", "overlay", options=(f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}")
    )
    await mount_all([m], target)
    try:
        assert is_mounted(target)
        assert (target / "a").read_text() == "from lower"
        (target / "b").write_text("new")
        assert (upper / "b").read_text() == "new"
    finally:
        await unmount_all(target)
    assert not is_mounted(target)
    assert not (target / "a").exists()

    await mount_all([Mount("bind", str(lower), options=("ro", "rbind"))], target)
    try:
        assert (target / "a").read_text() == "from lower"
        with pytest.raises(OSError):
            (target / "c").write_text("x")
    finally:
        await unmount(target)
    assert not is_mounted(target)
    await unmount(target)  # nothing mounted: a no-op


async def test_failed_mount_names_target_and_cause(tmp_path: Path) -> None:
    need_mount()
    target = tmp_path / "mnt"
    target.mkdir()
    bad = Mount("overlay", "overlay", options=(f"lowerdir={tmp_path / 'missing'}",))
    with pytest.raises(Internal, match=str(target)):
        await mount_all([bad], target)
    assert not is_mounted(target)


async def test_128_lowerdirs_mount(tmp_path: Path) -> None:
    need_mount()
    root = tmp_path / "a-deliberately-long-directory-name-to-push-the-options-past-a-page"
    lowers = []
    for i in range(128):
        d = root / "snapshots" / str(i) / "fs"
        d.mkdir(parents=True)
        (d / f"f{i}").write_text(str(i))
        (d / "top").write_text(str(i))
        lowers.append(d)
    lowers.reverse()  # highest first: 127 is the direct parent
    (m,) = snapshot_mounts(Kind.VIEW, root / "snapshots" / "999", lowers, NONE)
    assert len(",".join(m.options)) > PAGE_SIZE
    target = tmp_path / "mnt"
    target.mkdir()
    await mount_all([m], target)
    try:
        assert (target / "top").read_text() == "127"
        assert sorted(p.name for p in target.iterdir() if p.name != "top") == sorted(
            f"f{i}" for i in range(128)
        )
    finally:
        await unmount_all(target)
