"""User resolution against a rootfs's passwd and group files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.users import ExecUser, resolve_in_root, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app user:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
staff:x:50:app
wheel:x:10:root,app
app:x:1000:
nogroup:x:65534:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(
    ("user", "uid", "gid", "gids"),
    [
        ("", 0, 0, (0, 10)),
        ("root", 0, 0, (0, 10)),
        ("0", 0, 0, (0, 10)),
        ("app", 1000, 1000, (1000, 50, 10)),
        ("1000", 1000, 1000, (1000, 50, 10)),
        ("app:staff", 1000, 50, (50, 10)),
        ("app:4242", 1000, 4242, (4242, 50, 10)),
        ("1000:app", 1000, 1000, (1000, 50, 10)),
        ("1000:0", 1000, 0, (0, 50, 10)),
        ("nobody", 65534, 65534, (65534,)),
        # A uid missing from passwd is allowed (as in docker): gid 0, no groups.
        ("4321", 4321, 0, (0,)),
        ("4321:77", 4321, 77, (77,)),
    ],
)
def test_resolve_user_table(
    rootfs: Path, user: str, uid: int, gid: int, gids: tuple[int, ...]
) -> None:
    got = resolve_user(rootfs, user)
    assert (got.uid, got.gid, got.additional_gids) == (uid, gid, gids)


def test_named_user_carries_name_and_home(rootfs: Path) -> None:
    assert resolve_user(rootfs, "app") == ExecUser(1000, 1000, (1000, 50, 10), "app", "/home/app")


def test_unknown_user_has_dockers_message(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument) as exc:
        resolve_user(rootfs, "bob")
    assert str(exc.value) == "unable to find user bob: no matching entries in passwd file"


def test_unknown_group(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="unable to find group nope: no matching entries"):
        resolve_user(rootfs, "app:nope")


def test_missing_passwd_allows_numeric_only(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "123:45").uid == 123
    with pytest.raises(InvalidArgument, match="unable to find user app"):
        resolve_user(tmp_path, "app")


def test_passwd_symlink_cannot_escape_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "host-etc"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:4242:4242::/:/bin/sh\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "inside").mkdir()
    (rootfs / "inside" / "passwd").write_text("good:x:7:7::/:/bin/sh\n")
    # An absolute target and a climbing relative target both stay inside the rootfs.
    os.symlink(str(outside / "passwd"), rootfs / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        resolve_user(rootfs, "evil")
    os.unlink(rootfs / "etc" / "passwd")
    os.symlink("../../../../inside/passwd", rootfs / "etc" / "passwd")
    assert resolve_user(rootfs, "good").uid == 7


def test_resolve_in_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink("/a", tmp_path / "abs")
    os.symlink("../../..", tmp_path / "a" / "up")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    assert resolve_in_root(tmp_path, "/abs/x") == tmp_path / "a" / "x"
    assert resolve_in_root(tmp_path, "a/up/etc/passwd") == tmp_path / "etc" / "passwd"
    assert resolve_in_root(tmp_path, "/../../etc") == tmp_path / "etc"
    with pytest.raises(OSError, match="too many levels"):
        resolve_in_root(tmp_path, "/loop1/x")
