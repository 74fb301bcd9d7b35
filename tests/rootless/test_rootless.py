"""Rootless snapfs: ``snapfs pull`` and ``snapfs run`` as an ordinary user, end to end.

The CLI re-executes itself in a user + mount namespace; overlayfs (``userxattr``), FUSE and
runc (rootless) all run in there, against the real registry. Unit tests of the pure parts
(when to re-execute, the command line, the rootless decision) come first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from content.convert import convert_image
from content.reference import Reference, parse_reference
from content.registry import open_registry
from content.tarlayer import Entry
from runtime.runc import Runc
from runtime.spec import RunOptions, build_spec
from snapfs.cli._rootless import (
    USERNS_COMMANDS,
    IdMapping,
    check_userns_allowed,
    needs_userns,
    plan_id_mapping,
    root_only_notice,
    subcommand,
    unshare_argv,
    with_config_flags,
)
from snapfs.errors import FailedPrecondition
from snapfs.sys import userns as userns_module
from snapfs.sys.userns import in_user_namespace, parse_subid
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.rootless import userenv
from tests.rootless.userenv import RootlessUser

rootless_user = userenv.rootless_user
rootless_snapfs = userenv.rootless_snapfs
ranged_user = userenv.ranged_user

APP = [Entry("app", "dir"), Entry("app/data", data=b"hello from the image\n")]
RUN = ["sh", "-c", "id -u; cat /app/data; exit 3"]


# -- pure logic ---------------------------------------------------------------------------------

def test_in_user_namespace_reads_the_uid_map(tmp_path: Path) -> None:
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0          0 4294967295\n")
    assert not in_user_namespace(uid_map)
    uid_map.write_text("         0       1000          1\n")
    assert in_user_namespace(uid_map)
    assert not in_user_namespace(tmp_path / "missing")


@pytest.mark.parametrize("command", sorted(USERNS_COMMANDS))
def test_commands_that_mount_reexecute_without_root(command: str) -> None:
    assert needs_userns(command, euid=1000, in_userns=False)
    assert not needs_userns(command, euid=0, in_userns=False)  # root on the host
    assert not needs_userns(command, euid=0, in_userns=True)  # already inside
    assert not needs_userns(command, euid=1000, in_userns=True)  # someone else's namespace


@pytest.mark.parametrize("command", ["convert", "nosuch", None])
def test_commands_without_mounts_run_as_they_are(command: str | None) -> None:
    assert not needs_userns(command, euid=1000, in_userns=False)


def test_config_flags_follow_the_subcommand_and_the_users_own_flags_win() -> None:
    argv = ["--log-level", "run", "run", "--rm", "--root", "/mine", "img", "sh"]
    assert subcommand(argv) == ("run", 2)
    assert subcommand(["--version"]) is None
    out = with_config_flags(argv, root=Path("/r"), state=Path("/s"),
                            config_file=Path("/c.toml"))
    assert out == ["--log-level", "run", "run", "--root", "/r", "--state", "/s",
                   "--config", "/c.toml", "--rm", "--root", "/mine", "img", "sh"]


def test_unshare_command_line() -> None:
    cmd = unshare_argv(["pull", "x"], unshare="/usr/bin/unshare", python="/py")
    assert cmd[:6] == ["/usr/bin/unshare", "--user", "--map-root-user", "--mount",
                       "--propagation", "private"]
    assert cmd[7:10] == ["/py", "-P", "-c"]
    assert cmd[-2:] == ["pull", "x"]


def test_unshare_maps_the_subordinate_ranges_when_planned() -> None:
    mapping = IdMapping((100000, 65536), (200000, 1000))
    cmd = unshare_argv(["pull", "x"], unshare="/usr/bin/unshare", python="/py", mapping=mapping)
    assert cmd[:7] == ["/usr/bin/unshare", "--user", "--map-root-user",
                       "--map-users=100000,1,65536", "--map-groups=200000,1,1000", "--mount",
                       "--propagation"]


def test_subordinate_ranges_are_planned_only_when_both_exist_and_the_helpers_do(
        tmp_path: Path) -> None:
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("other:100000:65536\nme:165536:65536\n")
    subgid.write_text("1001:300000:5\n")  # by uid, as shadow-utils also accepts
    found = plan_id_mapping("me", 1001, subuid=subuid, subgid=subgid, which=lambda n: n)
    assert found == IdMapping((165536, 65536), (300000, 5))
    subgid.write_text("other:1:2\n")
    missing = plan_id_mapping("me", 1001, subuid=subuid, subgid=subgid, which=lambda n: n)
    assert missing == IdMapping(None, None, f"no range for me in {subgid}")
    absent = plan_id_mapping("me", 1001, subuid=tmp_path / "x", subgid=tmp_path / "y",
                             which=lambda n: n)
    assert absent.reason == f"no range for me in {tmp_path / 'x'} and {tmp_path / 'y'}"
    subgid.write_text("me:300000:5\n")
    helpers = plan_id_mapping("me", 1001, subuid=subuid, subgid=subgid,
                              which=lambda n: None if n == "newgidmap" else n)
    assert helpers.reason == "newgidmap not found (package uidmap)"
    assert "\n" not in root_only_notice("me", helpers.reason)
    assert parse_subid("me:1:0\nme:x:5\nme:7:9\n", "me", 5) == (7, 9)  # the first usable


def test_disabled_user_namespaces_are_named(tmp_path: Path) -> None:
    knob = tmp_path / "max_user_namespaces"
    knob.write_text("0\n")
    with pytest.raises(FailedPrecondition, match="max_user_namespaces"):
        check_userns_allowed(knob)
    knob.write_text("15000\n")
    check_userns_allowed(knob)


def test_inside_a_user_namespace_spec_and_runc_are_rootless(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("0 1000 1\n")
    monkeypatch.setattr(userns_module, "UID_MAP", uid_map)
    spec = build_spec({"Cmd": ["sh"]}, RunOptions(), tmp_path)
    assert {"type": "user"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert "resources" not in spec["linux"]  # no cgroup writes
    assert Runc().rootless
    uid_map.write_text("0 0 4294967295\n")
    assert Runc().rootless is (os.geteuid() != 0)


# -- as an ordinary user ------------------------------------------------------------------------

async def push(factory: ImageFactory, registry: RegistryServer, repo: str,
               layers: list[Path | list[Entry]], *, lazy: bool) -> Reference:
    src = (await factory.push(registry, repo, layers)).ref
    if not lazy:
        return src
    dst = parse_reference(f"{registry.host}/{repo}:esgz")
    async with open_registry() as reg:
        await convert_image(reg, src, dst, format="estargz")
    return dst


def assert_nothing_left(user: RootlessUser) -> None:
    """The user's namespaces died with its commands: no process, no mount on the host."""
    assert user.pids() == []
    assert user.host_mounts() == []


@pytest.mark.parametrize("lazy", [False, True], ids=["gzip", "estargz"])
async def test_pull_and_run_as_an_ordinary_user(
        rootless_user: RootlessUser, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, lazy: bool) -> None:
    ref = await push(image_factory, registry, repo_name, [busybox_tree, APP], lazy=lazy)
    pulled = json.loads(await rootless_user.ok("pull", "--json", str(ref)))
    assert (pulled["lazy"], pulled["native"]) == ((2, 0) if lazy else (0, 2))

    res = await rootless_user.run("run", "--rm", "-q", str(ref), *RUN)
    assert (res.status, res.stdout) == (3, "0\nhello from the image\n"), res.stderr
    # No subordinate ids for this user: one notice line says so, and how to add them.
    [notice] = [line for line in res.stderr.splitlines() if "rootless:" in line]
    assert notice.startswith("snapfs: rootless: only your own uid and gid are mapped (no "
                             f"range for {rootless_user.name} in /etc/subuid and /etc/subgid)")

    # The defaults moved to the user's XDG dirs, and what snapfs wrote there is the user's.
    root = rootless_user.data_home / "snapfs"
    assert (root / "metadata.lmdb").is_dir()
    assert root.stat().st_uid == rootless_user.uid
    assert (rootless_user.runtime_dir / "snapfs").stat().st_uid == rootless_user.uid
    assert_nothing_left(rootless_user)
    # --rm removed the container; the image stays, pulled once.
    ps = json.loads(await rootless_user.ok("ps", "-a", "--json"))
    assert ps == []
    images = json.loads(await rootless_user.ok("images", "--json"))
    assert [i["name"] for i in images] == [str(ref)]


@pytest.mark.parametrize("lazy", [False, True], ids=["gzip", "estargz"])
async def test_whiteouts_hide_lower_files_as_an_ordinary_user(
        rootless_user: RootlessUser, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, lazy: bool) -> None:
    lower = [Entry("app", "dir"), Entry("app/keep", data=b"k\n"), Entry("app/gone", data=b"g\n"),
             Entry("app/opq", "dir"), Entry("app/opq/old", data=b"o\n")]
    upper = [Entry("app", "dir"), Entry("app/gone", "whiteout"), Entry("app/opq", "dir"),
             Entry("app/opq", "opaque"),
             Entry("app/opq/new", data=b"n\n")]
    ref = await push(image_factory, registry, repo_name, [busybox_tree, lower, upper],
                     lazy=lazy)
    res = await rootless_user.run("run", "--rm", "-q", str(ref), "sh", "-c",
                                  "ls /app; ls /app/opq; cat /app/gone 2>/dev/null || echo none")
    assert (res.status, res.stdout) == (0, "keep\nopq\nnew\nnone\n"), res.stderr
    assert_nothing_left(rootless_user)


async def test_a_daemons_mounts_are_refused_inside_a_user_namespace(
        rootless_user: RootlessUser, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    """A rootless ``snapfs serve`` runs in its own namespace; a client command in another
    one says it cannot use its mounts instead of failing on paths it cannot see."""
    ref = await push(image_factory, registry, repo_name, [busybox_tree, APP], lazy=False)
    sock = rootless_user.runtime_dir / "snapfs" / "snapfs.sock"
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
            rootless_user.argv(str(rootless_user.snapfs), "serve"), check=False,
            task_status=task_status))
        try:
            with trio.fail_after(userenv.WAIT):
                while not sock.exists():
                    await trio.sleep(0.05)
            res = await rootless_user.run("pull", "-q", str(ref))
            assert res.status == 125
            assert "cannot use a daemon's mounts" in res.stderr
            assert str(sock) in res.stderr
        finally:
            proc.terminate()
    assert proc.returncode in (0, -15, 143)
    assert_nothing_left(rootless_user)


async def test_container_lifecycle_commands_as_an_ordinary_user(
        rootless_user: RootlessUser, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    """run (kept), ps, status, rm and rmi each enter their own namespace and agree."""
    ref = await push(image_factory, registry, repo_name, [busybox_tree, APP], lazy=True)
    res = await rootless_user.run("run", "-q", "--name", "kept", str(ref), *RUN)
    assert (res.status, res.stdout) == (3, "0\nhello from the image\n"), res.stderr
    [rec] = json.loads(await rootless_user.ok("ps", "-a", "--json"))
    assert (rec["name"], rec["status"], rec["exit_code"]) == ("kept", "exited", 3)

    reports = json.loads(await rootless_user.ok("status", "--json"))
    assert {r["format"] for r in reports} == {"estargz"}
    assert len(reports) == 2

    assert (await rootless_user.ok("rm", "kept")).strip() == rec["id"]
    assert json.loads(await rootless_user.ok("ps", "-a", "--json")) == []
    assert f"untagged: {ref}" in await rootless_user.ok("rmi", str(ref))
    assert json.loads(await rootless_user.ok("images", "--json")) == []
    assert_nothing_left(rootless_user)


async def test_demo_as_an_ordinary_user(rootless_user: RootlessUser) -> None:
    res = await rootless_user.run("demo", "--json")
    assert res.status == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert (report["exit_status"], report["lazy_layers"]) == (0, 2)
    assert "only the files the container read were fetched before it started" in res.stdout
    assert "hello from a lazily pulled container" in res.stdout
    assert_nothing_left(rootless_user)


OWNED = [Entry("app", "dir"), Entry("app/data", data=b"hello from the image\n"),
         Entry("app/owned", "dir", uid=1000, gid=42),
         Entry("app/owned/file", data=b"mine\n", uid=1000, gid=42),
         Entry("app/owned/link", "symlink", linkname="file", uid=1000, gid=42),
         Entry("app/other", data=b"x\n", uid=65000, gid=65000)]
STAT = "stat -c '%n %u:%g' /app/owned /app/owned/file /app/other; stat -Lc '%u' /app/owned/link"


@pytest.mark.parametrize("lazy", [False, True], ids=["gzip", "estargz"])
async def test_subordinate_ids_keep_owners_and_run_as_any_mapped_user(
        ranged_user: RootlessUser, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, lazy: bool) -> None:
    """With a range in /etc/subuid and /etc/subgid, files of uid 1000 / gid 42 keep those ids
    in the container (unpacked and lazy layers alike), -u 1000:42 runs as them, and nothing
    warns about chown or root-only mapping."""
    ref = await push(image_factory, registry, repo_name, [busybox_tree, OWNED], lazy=lazy)
    pull = await ranged_user.run("pull", "--json", str(ref))
    assert pull.status == 0, pull.stderr
    assert (json.loads(pull.stdout)["lazy"] == 2) is lazy
    res = await ranged_user.run("run", "--rm", "-q", str(ref), "sh", "-c", STAT)
    assert (res.status, res.stdout) == (0, "/app/owned 1000:42\n/app/owned/file 1000:42\n"
                                           "/app/other 65000:65000\n1000\n"), res.stderr
    res2 = await ranged_user.run("run", "--rm", "-q", "-u", "1000:42", str(ref), "sh", "-c",
                                 "id -u; id -g; cat /app/owned/file; touch /app/owned/new")
    assert (res2.status, res2.stdout) == (0, "1000\n42\nmine\n"), res2.stderr
    for out in (pull.stderr, res.stderr, res2.stderr):
        assert "chown" not in out and "rootless:" not in out, out
    # An id past the range is refused in one line naming it.
    res3 = await ranged_user.run("run", "--rm", "-q", "-u", "70000", str(ref), "true")
    assert res3.status == 125
    assert res3.stderr.strip().endswith("uid 70000 is not mapped in this rootless user "
                                        "namespace (mapped: 0, 1-65536); add ranges to "
                                        "/etc/subuid and /etc/subgid"), res3.stderr
    assert_nothing_left(ranged_user)


async def test_dev_fuse_that_cannot_be_opened_is_one_line_with_the_fix(
        rootless_user: RootlessUser) -> None:
    """As the ordinary user, a root-only file (a 0600 stand-in for /dev/fuse: the real one
    must stay openable for other tests running at the same time), in a directory the user
    can search, so the refusal is the file's own."""
    device = rootless_user.base / "fuse"
    device.write_bytes(b"")
    device.chmod(0o600)
    python = rootless_user.snapfs.parent / "python"
    code = ("import sys; from pathlib import Path; from snapfs.fuse.session import "
            "check_dev_fuse\ntry:\n check_dev_fuse(Path(sys.argv[1]))\n"
            "except Exception as exc: print(exc)")
    res = await trio.run_process(rootless_user.argv(str(python), "-c", code, str(device)),
                                 capture_stdout=True, capture_stderr=True, check=False)
    assert res.stdout.decode() == (f"{device}: cannot open it (Permission denied, mode 0600): "
                                   "chmod 0666 /dev/fuse (as distributions ship it) or run as "
                                   "root\n"), res.stderr


async def test_without_subordinate_ids_a_full_unpack_says_so_once(
        rootless_user: RootlessUser, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    """The root-only fallback: entries of other owners become root's, in one line per layer
    (not one per entry), and -u for such an id is refused naming what is mapped."""
    ref = await push(image_factory, registry, repo_name, [busybox_tree, OWNED], lazy=False)
    pull = await rootless_user.run("pull", "-q", str(ref))
    assert pull.status == 0, pull.stderr
    assert "chown" not in pull.stderr
    summaries = [line for line in pull.stderr.splitlines() if "does not map" in line]
    # One per layer with such entries: busybox's (home/app is 1000's) and ours.
    assert len(summaries) == 2, pull.stderr
    summary = summaries[1]
    assert "4 entries owned by ids this user namespace does not map (first: app/owned, " \
           "1000:42) are owned by root instead" in summary
    res = await rootless_user.run("run", "--rm", "-q", str(ref), "stat", "-c", "%u:%g",
                                  "/app/owned/file")
    assert (res.status, res.stdout) == (0, "0:0\n"), res.stderr
    res = await rootless_user.run("run", "--rm", "-q", "-u", "1000:42", str(ref), "true")
    assert res.status == 125
    assert "uid 1000 is not mapped in this rootless user namespace (mapped: 0)" in res.stderr
    assert_nothing_left(rootless_user)
