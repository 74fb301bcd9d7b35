"""Startup profiles: recording accesses through the FUSE handlers (and a real mount with an
overlay on top), merging them across layers, the file format ``snapfs convert`` reads."""

from __future__ import annotations

from pathlib import Path

from content.profilefile import format_profile, parse_profile, write_profile
from snapfs.fuse import Entry, LayerFS, build_tree
from snapfs.fuse.inodes import ROOT_INODE, Access
from snapfs.lazy.profile import LocalRecording, covers, merge_accesses
from snapfs.snapshot.mounting import mount_all
from snapfs.snapshot.types import Mount
from snapfs.sys.mountops import unmount
from tests.snapfs.fuse_memlayer import blocking, mem_layer, need_fuse, open_mounted, sample_files


async def _ino(fs: LayerFS, path: str) -> int:
    ino = ROOT_INODE
    for part in path.split("/"):
        ino = (await fs.lookup(ino, part.encode())).st_ino
    return ino


async def _cat(fs: LayerFS, path: str) -> bytes:
    fh = (await fs.open(await _ino(fs, path), 0)).fh
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


def _tree(*names: str, opaque: str = "") -> tuple[Entry, ...]:
    entries = [Entry(n, "reg", size=1) for n in names]
    if opaque:
        entries.append(Entry(f"{opaque}/.wh..wh..opq", "reg"))
    return tuple(entries)


def test_an_upper_layer_hides_paths_it_holds_whiteouts_or_makes_opaque() -> None:
    upper = build_tree(_tree("etc/passwd", "etc/.wh.gone", "file", opaque="var"))
    assert covers(upper, "etc/passwd")
    assert covers(upper, "etc/gone")  # whited out
    assert covers(upper, "var/cache/x")  # below an opaque directory
    assert covers(upper, "file/below")  # a file where the path needs a directory
    assert not covers(upper, "etc/group")
    assert not covers(upper, "usr/bin/sh")


def test_merge_keeps_first_access_order_of_the_visible_copy_only() -> None:
    lower = build_tree(_tree("bin/sh", "etc/passwd", "etc/gone"))
    upper = build_tree(_tree("etc/passwd", "etc/.wh.gone", "app/a"))
    chain = [("low", lower), ("up", upper)]
    accesses = [Access("low", "bin/sh"), Access("other", "x/y"), Access("up", "app/a"),
                Access("low", "etc/passwd"),  # another container's: hidden here by "up"
                Access("low", "etc/gone"), Access("up", "etc/passwd"), Access("low", "bin/sh")]
    assert merge_accesses(accesses, chain) == ["bin/sh", "app/a", "etc/passwd"]


def test_profile_file_round_trips_through_converts_parser(tmp_path: Path) -> None:
    text = format_profile(["bin/busybox", "app/a", "app/b"], image="127.0.0.1:5000/app:1")
    assert text.startswith("# snapfs startup profile of 127.0.0.1:5000/app:1\n")
    dest = tmp_path / "p.txt"
    write_profile(dest, text)
    assert parse_profile(dest.read_text()) == ["bin/busybox", "app/a", "app/b"]
    assert [p.name for p in tmp_path.iterdir()] == ["p.txt"]  # no temp file left


async def test_handlers_record_first_open_or_read_per_layer_in_order() -> None:
    fs = LayerFS(Path("/nonexistent"))
    fs.add_layer(mem_layer("a", sample_files()))
    fs.add_layer(mem_layer("b", sample_files()))
    await _cat(fs, "a/etc/caps")  # before the recording: not recorded
    early = (await fs.open(await _ino(fs, "a/home/user/secret"), 0)).fh
    everything = fs.start_recording()
    only_a = fs.start_recording(["a"])
    await _cat(fs, "b/etc/passwd")
    await _cat(fs, "a/bin/ls")  # a hardlink: recorded under the name it was opened by
    await _cat(fs, "a/etc/passwd")
    await _cat(fs, "a/bin/ls")
    await fs.read(early, 0, 3)  # opened before, read during: recorded at its first read
    await fs.release(early)
    await fs.opendir(await _ino(fs, "a/etc"))  # directories are not files read
    assert fs.stop_recording(only_a) == [
        Access("a", "bin/ls"), Access("a", "etc/passwd"), Access("a", "home/user/secret")]
    await _cat(fs, "a/usr/lib/libc.so")
    assert fs.stop_recording(everything) == [
        Access("b", "etc/passwd"), Access("a", "bin/ls"), Access("a", "etc/passwd"),
        Access("a", "home/user/secret"), Access("a", "usr/lib/libc.so")]
    await _cat(fs, "a/etc/caps")  # nothing records any more
    assert fs.stop_recording(everything) == [
        Access("b", "etc/passwd"), Access("a", "bin/ls"), Access("a", "etc/passwd"),
        Access("a", "home/user/secret"), Access("a", "usr/lib/libc.so")]


async def test_recording_through_an_overlay_of_the_real_mount(tmp_path: Path) -> None:
    need_fuse()
    lower = mem_layer("lower", [(Entry("bin/", "dir"), b""), (Entry("bin/sh", "reg"), b"sh\n"),
                                (Entry("etc/", "dir"), b""), (Entry("etc/os", "reg"), b"old\n")])
    upper = mem_layer("upper", [(Entry("etc/", "dir"), b""), (Entry("etc/os", "reg"), b"new\n"),
                                (Entry("app/", "dir"), b""), (Entry("app/a", "reg"), b"a\n"),
                                (Entry("app/b", "reg"), b"b\n")])
    merged = tmp_path / "merged"
    merged.mkdir()
    async with open_mounted(tmp_path / "fuse") as fs:
        lo, up = fs.add_layer(lower), fs.add_layer(upper)
        await blocking(lambda: (lo.stat(), up.stat()))
        await mount_all([Mount("overlay", "overlay", options=(f"lowerdir={up}:{lo}",))], merged)
        try:
            recording = LocalRecording(fs, ["lower", "upper"])
            for name in ("app/b", "bin/sh", "etc/os", "app/a", "app/b"):
                assert await blocking((merged / name).read_bytes)
            paths = await recording.stop()
            await blocking((merged / "etc/os").read_bytes)  # after stop: not recorded
            assert await recording.stop() == paths
        finally:
            await unmount(merged)
    assert paths == ["app/b", "bin/sh", "etc/os", "app/a"]
