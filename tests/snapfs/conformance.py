"""containerd's snapshotter conformance suite (snapshots/testsuite), for any ``Snapshots``.

Each case is ``async def case(sn, work)`` using only the protocol plus real mounts, so the
same cases run against the in-process snapshotter and through the gRPC socket. ``CASES``
maps containerd's test names to them. Cases that mount call ``need_root()`` first.
"""

from __future__ import annotations

import errno
import inspect
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from snapfs.errors import ContentError, FailedPrecondition, InvalidArgument
from snapfs.snapshot.mounting import mount_all
from snapfs.snapshot.types import Info, Kind, Mount, Snapshots
from snapfs.sys.mountops import unmount_all
from tests.fixtures.realenv import need, need_root

Op = Callable[[Path], None]
Case = Callable[[Snapshots, Path], Awaitable[None]]

GC_ROOT = "containerd.io/gc.root"
OPT = {GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# -- fstest: appliers and tree comparison ---------------------------------------------------


def _p(root: Path, rel: str) -> Path:
    return root / rel.lstrip("/")


def create_file(rel: str, data: bytes, mode: int) -> Op:
    def op(root: Path) -> None:
        p = _p(root, rel)
        p.write_bytes(data)
        os.chmod(p, mode)

    return op


def create_dir(rel: str, mode: int) -> Op:
    def op(root: Path) -> None:
        p = _p(root, rel)
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, mode)

    return op


def remove_all(rel: str) -> Op:
    def op(root: Path) -> None:
        p = _p(root, rel)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    return op


def chown(rel: str, uid: int, gid: int) -> Op:
    return lambda root: os.lchown(_p(root, rel), uid, gid)


def link(old: str, new: str) -> Op:
    return lambda root: os.link(_p(root, old), _p(root, new))


def rename(old: str, new: str) -> Op:
    def op(root: Path) -> None:
        src, dst = _p(root, old), _p(root, new)
        try:
            os.rename(src, dst)
        except OSError as e:
            # overlayfs without redirect_dir answers EXDEV for a lower directory; mv(1) then
            # copies and deletes, and so do we: the result a user sees is the same.
            if e.errno != errno.EXDEV:
                raise
            shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
            st = os.lstat(src)
            os.lchown(dst, st.st_uid, st.st_gid)
            shutil.rmtree(src)

    return op


def apply(root: Path, ops: Iterable[Op]) -> None:
    for op in ops:
        op(root)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a user sees under ``root`` (root itself excluded): type, mode, owner, content."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISREG(st.st_mode):
                body: object = Path(full).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            else:
                body = None
            mode = stat.S_IMODE(st.st_mode)
            out[rel] = (stat.S_IFMT(st.st_mode), mode, st.st_uid, st.st_gid, body)
    return out


def assert_same_tree(actual: Path, expected: Path) -> None:
    a, e = tree(actual), tree(expected)
    assert a == e, f"{actual} differs from {expected}: {_tree_diff(a, e)}"


def _tree_diff(a: dict[str, tuple[object, ...]], e: dict[str, tuple[object, ...]]) -> str:
    lines = [f"missing {k}" for k in sorted(e.keys() - a.keys())]
    lines += [f"unexpected {k}" for k in sorted(a.keys() - e.keys())]
    lines += [f"{k}: {a[k]!r} != {e[k]!r}" for k in sorted(a.keys() & e.keys()) if a[k] != e[k]]
    return "; ".join(lines)


# -- mounting ------------------------------------------------------------------------------


def need_mounts() -> None:
    need_root("root, to mount bind and overlay")
    need("overlay" in Path("/proc/filesystems").read_text(), "overlayfs in the kernel")


@asynccontextmanager
async def mounted(mounts: list[Mount], target: Path) -> AsyncIterator[Path]:
    need_mounts()
    target.mkdir(parents=True, exist_ok=True)
    assert mounts, "expected mounts to have entries"
    await mount_all(mounts, target)
    try:
        yield target
    finally:
        await unmount_all(target)


async def create_snapshot(sn: Snapshots, parent: str, work: Path, ops: list[Op]) -> str:
    n = f"layer-{random.getrandbits(48):012x}"
    prepare = f"{n}-prepare"
    m = await sn.prepare(prepare, parent, OPT)
    td = Path(tempfile.mkdtemp(prefix="prepare", dir=work))
    try:
        async with mounted(m, td):
            apply(td, ops)
    finally:
        td.rmdir()
    await sn.commit(n, prepare, OPT)
    return n


async def check_snapshot(sn: Snapshots, work: Path, name: str, check: Path) -> None:
    view = f"{name}-view"
    m = await sn.view(view, name, OPT)
    td = Path(tempfile.mkdtemp(prefix="check", dir=work))
    try:
        async with mounted(m, td):
            assert_same_tree(td, check)
    finally:
        td.rmdir()
        await sn.remove(view)


async def check_snapshots(sn: Snapshots, work: Path, *layers: list[Op]) -> None:
    """Build a chain from ``layers``, checking each committed snapshot through a view
    against the same changes applied to one flat directory."""
    flat = Path(tempfile.mkdtemp(prefix="flat", dir=work))
    try:
        parent = ""
        for ops in layers:
            name = await create_snapshot(sn, parent, work, ops)
            apply(flat, ops)
            await check_snapshot(sn, work, name, flat)
            parent = name
    finally:
        shutil.rmtree(flat)


async def close_snapshotter(sn: Snapshots) -> None:
    closer = getattr(sn, "aclose", None) or getattr(sn, "close", None)
    assert closer is not None, f"{sn!r} has no close"
    result = closer()
    if inspect.isawaitable(result):
        await result


# -- the cases -----------------------------------------------------------------------------


async def basic(sn: Snapshots, work: Path) -> None:
    initial = [
        create_file("/foo", b"foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    ]
    diff = [
        create_file("/bar", b"bar\n", 0o777),
        create_file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    ]
    expect = Path(tempfile.mkdtemp(prefix="expect", dir=work))
    preparing = str(work / "preparing")
    async with mounted(await sn.prepare(preparing, "", OPT), work / "preparing") as mp:
        apply(mp, initial)
    committed = str(work / "committed")
    await sn.commit(committed, preparing, OPT)
    si = await sn.stat(committed)
    assert (si.parent, si.kind) == ("", Kind.COMMITTED)
    with pytest.raises(ContentError):
        await sn.stat(preparing)

    nxt = str(work / "nextlayer")
    async with mounted(await sn.prepare(nxt, committed, OPT), work / "nextlayer") as mp:
        apply(expect, initial)
        assert_same_tree(mp, expect)
        apply(mp, diff)
    ni = await sn.stat(nxt)
    assert (ni.parent, ni.kind) == (committed, Kind.ACTIVE)

    next_committed = str(work / "committed-next")
    await sn.commit(next_committed, nxt, OPT)
    si2 = await sn.stat(next_committed)
    assert (si2.parent, si2.kind) == (committed, Kind.COMMITTED)
    with pytest.raises(ContentError):
        await sn.stat(nxt)

    walked = {i.name: i for i in await sn.list()}
    assert walked[si.name] == si
    assert walked[si2.name] == si2

    nextnext = str(work / "nextnextlayer")
    async with mounted(await sn.view(nextnext, next_committed, OPT), work / "nextnextlayer") as mp:
        apply(expect, diff)
        assert_same_tree(mp, expect)
    await sn.remove(nextnext)
    with pytest.raises(FailedPrecondition, match="remove"):
        await sn.remove(committed)
    await sn.remove(next_committed)
    await sn.remove(committed)
    shutil.rmtree(expect)


async def _prepare_write_foo(sn: Snapshots, work: Path, name: str, parent: str, data: bytes) -> str:
    key = str(work / name)
    async with mounted(await sn.prepare(key, parent, OPT), work / name) as mp:
        (mp / "foo").write_bytes(data)
    return key


async def stat_active(sn: Snapshots, work: Path) -> None:
    preparing = str(work / "preparing")
    async with mounted(await sn.prepare(preparing, "", OPT), work / "preparing") as mp:
        (mp / "foo").write_bytes(b"foo\n")
        si = await sn.stat(preparing)
    assert (si.name, si.kind, si.parent) == (preparing, Kind.ACTIVE, "")


async def stat_committed(sn: Snapshots, work: Path) -> None:
    preparing = await _prepare_write_foo(sn, work, "preparing", "", b"foo\n")
    committed = str(work / "committed")
    await sn.commit(committed, preparing, OPT)
    si = await sn.stat(committed)
    assert (si.name, si.kind, si.parent) == (committed, Kind.COMMITTED, "")


async def transitivity(sn: Snapshots, work: Path) -> None:
    preparing = await _prepare_write_foo(sn, work, "preparing", "", b"foo\n")
    snap_a = str(work / "snapA")
    await sn.commit(snap_a, preparing, OPT)
    nxt = await _prepare_write_foo(sn, work, "next", snap_a, b"foo bar\n")
    snap_b = str(work / "snapB")
    await sn.commit(snap_b, nxt, OPT)
    si_a, si_b = await sn.stat(snap_a), await sn.stat(snap_b)
    si_parent_b = await sn.stat(si_b.parent)
    assert si_a.parent == ""
    assert si_b.parent == snap_a
    assert si_parent_b.parent == ""


async def prepare_view_failing(sn: Snapshots, work: Path) -> None:
    await sn.prepare("preparing", "", OPT)
    await sn.commit("snapA", "preparing", OPT)
    await sn.prepare("newlayer", "snapA", OPT)
    with pytest.raises(ContentError):
        await sn.view("newlayer", "snapA", OPT)
    await sn.prepare("prepLayer", "snapA", OPT)
    with pytest.raises(ContentError):
        await sn.prepare("prepLayer", "snapA", OPT)
    await sn.view("viewLayer", "snapA", OPT)
    with pytest.raises(ContentError):
        await sn.view("viewLayer", "snapA", OPT)


async def _base_snapshots(sn: Snapshots, prefix: str = "") -> None:
    await sn.prepare(f"{prefix}c1-a", "", OPT)
    await sn.commit(f"{prefix}c1", f"{prefix}c1-a", OPT)
    await sn.prepare(f"{prefix}c2-a", f"{prefix}c1", OPT)
    await sn.commit(f"{prefix}c2", f"{prefix}c2-a", OPT)
    await sn.prepare(f"{prefix}a1", f"{prefix}c2", OPT)
    await sn.prepare(f"{prefix}a2", "", OPT)
    await sn.view(f"{prefix}v1", f"{prefix}c2", OPT)
    await sn.view(f"{prefix}v2", "", OPT)


async def update(sn: Snapshots, work: Path) -> None:
    t1 = time.time()
    await _base_snapshots(sn)
    t2 = time.time()
    cases = [
        ("c1", Kind.COMMITTED, ""),
        ("c2", Kind.COMMITTED, "c1"),
        ("a1", Kind.ACTIVE, "c2"),
        ("a2", Kind.ACTIVE, ""),
        ("v1", Kind.VIEW, "c2"),
        ("v2", Kind.VIEW, ""),
    ]
    for name, kind, parent in cases:
        st = await sn.stat(name)
        assert t1 <= st.created_at <= t2, name
        assert st.created_at == st.updated_at, name
        assert (st.name, st.kind, st.parent) == (name, kind, parent)

        root_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", GC_ROOT: root_time}
        # Immutable fields in the request are ignored when no fieldpath names them.
        req = Info(name, "doesnotexist", Kind.VIEW, expected, created_at=1.0, updated_at=2.0)
        got = await sn.update(req)
        assert got.created_at == st.created_at, name
        assert got.updated_at >= st.updated_at, name
        assert (got.name, got.kind, got.parent) == (name, kind, parent)
        assert dict(got.labels) == expected

        req = Info(name, parent, kind, {"l1": "updated", "l4": "v4"})
        got = await sn.update(req, ["labels.l1", "labels.l2"])
        assert dict(got.labels) == {"l1": "updated", "l3": "v3", GC_ROOT: root_time}

        expected = {"l4": "v4", GC_ROOT: root_time}
        got = await sn.update(Info(name, parent, kind, expected), ["labels"])
        assert dict(got.labels) == expected
        assert dict((await sn.stat(name)).labels) == expected

        with pytest.raises(InvalidArgument):
            await sn.update(Info(name, "doesnotexist", kind, expected), ["parent"])


async def remove(sn: Snapshots, work: Path) -> None:
    await sn.prepare("committed-a", "", OPT)
    await sn.commit("committed-1", "committed-a", OPT)
    await sn.prepare("reuse-1", "committed-1", OPT)
    await sn.remove("reuse-1")
    await sn.view("reuse-1", "committed-1", OPT)
    await sn.remove("reuse-1")
    await sn.prepare("reuse-1", "", OPT)
    await sn.remove("committed-1")
    await sn.commit("committed-1", "reuse-1", OPT)


async def walk(sn: Snapshots, work: Path) -> None:
    opt = {GC_ROOT: "check-walk"}
    await sn.prepare("a-np", "", opt)
    await sn.prepare("p-tmp", "", opt)
    await sn.commit("p", "p-tmp", opt)
    await sn.prepare("a", "p", opt)
    await sn.view("v", "p", opt)
    await sn.prepare("p-wl-tmp", "", opt)
    await sn.commit("p-wl", "p-wl-tmp", {"l": "1", GC_ROOT: "check-walk"})
    await sn.prepare("a-wl", "p-wl", {"l": "2", GC_ROOT: "check-walk"})
    await sn.view("v-wl", "p-wl", {"l": "3", GC_ROOT: "check-walk"})
    await sn.prepare("a-np-wl", "", {"l": "2", GC_ROOT: "check-walk"})
    gc = 'labels."containerd.io/gc.root"==check-walk'
    table: list[tuple[list[str], list[str]]] = [
        (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"], [gc]),
        (["a-np", "a", "a-wl", "a-np-wl"], [f"kind==active,{gc}"]),
        (["v", "v-wl"], [f"kind==view,{gc}"]),
        (["p", "p-wl"], [f"kind==committed,{gc}"]),
        (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
        (["a-wl"], ["name==a-wl,labels.l"]),
        (["a", "v"], ["parent==p"]),
        (["a", "v", "a-wl", "v-wl"], [f'parent!="",{gc}']),
        (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
        (["a-wl", "a-np-wl"], ["labels.l==2"]),
    ]
    for want, filters in table:
        got = sorted(i.name for i in await sn.list(filters))
        assert got == sorted(want), filters
    with pytest.raises(InvalidArgument):
        await sn.list(["name=="])


async def layer_file_update(sn: Snapshots, work: Path) -> None:
    l1 = [
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ]
    l2 = [
        create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ]
    for _ in range(3):  # containerd runs it repeatedly: stale-cache bugs were intermittent
        await check_snapshots(sn, work, l1, l2)


async def remove_directory_in_lower_layer(sn: Snapshots, work: Path) -> None:
    l1 = [create_dir("/lib", 0o700), create_file("/lib/hidden", b"", 0o644)]
    l2 = [
        remove_all("/lib"),
        create_dir("/lib", 0o700),
        create_file("/lib/not-hidden", b"", 0o644),
    ]
    l3 = [create_file("/lib/newfile", b"", 0o644)]
    await check_snapshots(sn, work, l1, l2, l3)


async def chown_case(sn: Snapshots, work: Path) -> None:
    l1 = [
        create_dir("/opt", 0o700),
        create_dir("/opt/a", 0o700),
        create_dir("/opt/a/b", 0o700),
        create_file("/opt/a/b/file.txt", b"hello", 0o644),
    ]
    l2 = [chown(p, 1, 1) for p in ("/opt", "/opt/a", "/opt/a/b", "/opt/a/b/file.txt")]
    await check_snapshots(sn, work, l1, l2)


async def directory_permission_on_commit(sn: Snapshots, work: Path) -> None:
    l1 = [
        create_dir("/dir1", 0o700),
        create_dir("/dir2", 0o700),
        create_dir("/dir3", 0o700),
        create_dir("/dir4", 0o700),
        create_file("/dir4/f1", b"...", 0o644),
        create_dir("/dir5", 0o700),
        create_file("/dir5/f1", b"...", 0o644),
        chown("/dir1", 1, 1),
        chown("/dir2", 1, 1),
        chown("/dir3", 1, 1),
        chown("/dir5", 1, 1),
        chown("/dir5/f1", 1, 1),
    ]
    l2 = [
        chown("/dir2", 0, 0),
        remove_all("/dir3"),
        chown("/dir4", 1, 1),
        chown("/dir4/f1", 1, 1),
    ]
    l3 = [
        create_dir("/dir3", 0o700),
        chown("/dir3", 1, 1),
        remove_all("/dir5"),
        create_dir("/dir5", 0o700),
        chown("/dir5", 1, 1),
    ]
    await check_snapshots(sn, work, l1, l2, l3)


async def remove_intermediate_snapshot(sn: Snapshots, work: Path) -> None:
    base = str(work / "base")
    async with mounted(await sn.prepare(base, "", OPT), work / "base"):
        pass
    committed_base = str(work / "committed-base")
    await sn.commit(committed_base, base, OPT)
    intermediate = str(work / "intermediate")
    await sn.prepare(intermediate, committed_base, OPT)
    committed_inter = str(work / "committed-inter")
    await sn.commit(committed_inter, intermediate, OPT)
    top = str(work / "toplayer")
    await sn.prepare(top, committed_inter, OPT)
    with pytest.raises(FailedPrecondition):
        await sn.remove(committed_inter)
    await sn.remove(top)
    await sn.remove(committed_inter)
    await sn.remove(committed_base)
    assert [i.name for i in await sn.list()] == []


async def deleted_files_in_child_snapshot(sn: Snapshots, work: Path) -> None:
    l1 = [create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777)]
    l2 = [remove_all("/foobar")]
    await check_snapshots(sn, work, l1, l2, [])


async def move_file_from_lower_layer(sn: Snapshots, work: Path) -> None:
    l1 = [
        create_dir("/dir1", 0o700),
        create_file("/dir1/f1", b"Hello", 0o644),
        create_dir("dir2", 0o700),
        create_file("dir2/f2", b"...", 0o644),
    ]
    l2 = [
        create_dir("/dir3", 0o700),
        create_file("/dir3/f1", b"Hello", 0o644),
        remove_all("/dir1"),
        link("dir2/f2", "dir3/f2"),
        remove_all("dir2/f2"),
    ]
    await check_snapshots(sn, work, l1, l2)


async def rename_case(sn: Snapshots, work: Path) -> None:
    l1 = [
        create_dir("/dir1", 0o700),
        create_dir("/somefiles", 0o700),
        create_file("/somefiles/f1", b"was here first!", 0o644),
        create_file("/somefiles/f2", b"nothing interesting", 0o644),
    ]
    l2 = [
        rename("/dir1", "/dir2"),
        create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
        rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        rename("/somefiles/f2", "/somefiles/f3"),
    ]
    await check_snapshots(sn, work, l1, l2)


async def view_readonly(sn: Snapshots, work: Path) -> None:
    preparing, committed, view = (str(work / n) for n in ("preparing", "committed", "view"))
    await sn.prepare(preparing, "", OPT)
    await sn.commit(committed, preparing, OPT)
    m = await sn.view(view, committed, OPT)
    async with mounted(m, work / "view-mount") as mp:
        with pytest.raises(OSError) as e:
            (mp / "testfile").write_bytes(b"testcontent")
        assert e.value.errno == errno.EROFS
    await sn.remove(view)
    await sn.remove(committed)


async def stat_in_walk(sn: Snapshots, work: Path) -> None:
    prefix = "stats-in-walk-"
    await _base_snapshots(sn, prefix)
    infos = [i for i in await sn.list() if i.name.startswith(prefix)]
    assert len(infos) == 6
    for info in infos:
        assert await sn.stat(info.name) == info


async def close_twice(sn: Snapshots, work: Path) -> None:
    n = f"closeTwice-{random.getrandbits(32)}"
    await sn.prepare(f"{n}-prepare", "", OPT)
    await sn.commit(n, f"{n}-prepare", OPT)
    await sn.remove(n)
    await close_snapshotter(sn)
    await close_snapshotter(sn)


async def root_permission(sn: Snapshots, work: Path) -> None:
    old = os.umask(0o077)  # the snapshotter, not the caller's umask, decides the root's mode
    try:
        m = await sn.prepare(str(work / "preparing"), "", OPT)
    finally:
        os.umask(old)
    async with mounted(m, work / "preparing") as mp:
        assert stat.S_IMODE(os.stat(mp).st_mode) == 0o755


async def layers_128_mount(sn: Snapshots, work: Path) -> None:
    need_mounts()
    layers: list[list[Op]] = [
        [
            create_file("/bottom", b"way at the bottom\n", 0o777),
            create_file("/overwriteme", b"FIRST!\n", 0o777),
            create_dir("/ADDHERE", 0o755),
            create_dir("/ONLYME", 0o755),
            create_file("/ONLYME/bottom", b"bye!\n", 0o777),
        ]
    ]
    for i in range(1, 128):
        layers.append(
            [
                create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                create_file(f"/ADDHERE/file-{i}", b"same\n", 0o755),
                remove_all("/ONLYME"),
                create_dir("/ONLYME", 0o755),
                create_file(f"/ONLYME/file-{i}", b"only me!\n", 0o777),
            ]
        )
    flat = work / "flat"
    flat.mkdir()
    parent = ""
    for i, ops in enumerate(layers):
        preparing = work / f"prepare-layer-{i}"
        async with mounted(await sn.prepare(str(preparing), parent, OPT), preparing) as mp:
            assert_same_tree(mp, flat)
            apply(flat, ops)
            apply(mp, ops)
            assert_same_tree(mp, flat)
        parent = str(work / f"committed-{i}")
        await sn.commit(parent, str(preparing), OPT)
    view = work / "fullview"
    m = await sn.view(str(view), parent, OPT)
    assert m[0].type == "overlay"
    assert sum(o.startswith("lowerdir=") for o in m[0].options) == 1
    async with mounted(m, view) as mp:
        assert_same_tree(mp, flat)
        assert (mp / "overwriteme").read_bytes() == b"127 WAS HERE!\n"


CASES: dict[str, Case] = {
    "Basic": basic,
    "StatActive": stat_active,
    "StatComitted": stat_committed,
    "TransitivityTest": transitivity,
    "PreareViewFailingtest": prepare_view_failing,
    "Update": update,
    "Remove": remove,
    "Walk": walk,
    "LayerFileupdate": layer_file_update,
    "RemoveDirectoryInLowerLayer": remove_directory_in_lower_layer,
    "Chown": chown_case,
    "DirectoryPermissionOnCommit": directory_permission_on_commit,
    "RemoveIntermediateSnapshot": remove_intermediate_snapshot,
    "DeletedFilesInChildSnapshot": deleted_files_in_child_snapshot,
    "MoveFileFromLowerLayer": move_file_from_lower_layer,
    "Rename": rename_case,
    "ViewReadonly": view_readonly,
    "StatInWalk": stat_in_walk,
    "CloseTwice": close_twice,
    "RootPermission": root_permission,
    "128LayersMount": layers_128_mount,
}
