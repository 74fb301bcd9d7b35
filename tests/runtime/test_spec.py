"""config.json built from image configs: the rules docker/containerd users rely on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import InvalidArgument
from runtime.spec import (
    DEFAULT_CAPS,
    DEFAULT_PATH,
    RunOptions,
    Volume,
    build_spec,
    parse_volume,
    stop_signal,
)
from tests.fixtures.rootfs import GROUP, PASSWD


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


IMAGE: dict[str, Any] = {
    "Entrypoint": ["/entry"],
    "Cmd": ["serve", "--port=80"],
    "Env": ["PATH=/opt/bin:/bin", "LANG=C.UTF-8", "MODE=prod"],
    "WorkingDir": "/srv",
    "User": "app",
}


@pytest.mark.parametrize(
    ("image", "opts", "args"),
    [
        (IMAGE, RunOptions(), ["/entry", "serve", "--port=80"]),
        (IMAGE, RunOptions(args=("debug",)), ["/entry", "debug"]),
        (IMAGE, RunOptions(entrypoint=("/bin/sh",)), ["/bin/sh"]),
        (IMAGE, RunOptions(entrypoint=("/bin/sh",), args=("-c", "id")), ["/bin/sh", "-c", "id"]),
        (IMAGE, RunOptions(entrypoint=(), args=("ls",)), ["ls"]),
        ({"Cmd": ["sh"]}, RunOptions(), ["sh"]),
        ({"Cmd": ["sh"]}, RunOptions(args=("echo", "hi")), ["echo", "hi"]),
        ({"Entrypoint": ["/e"], "Cmd": None}, RunOptions(), ["/e"]),
    ],
)
def test_args_entrypoint_cmd_rules(
    rootfs: Path, image: dict[str, Any], opts: RunOptions, args: list[str]
) -> None:
    assert build_spec(image, opts, rootfs)["process"]["args"] == args


@pytest.mark.parametrize(
    ("image", "opts"),
    [
        ({"Entrypoint": None, "Cmd": None}, RunOptions()),
        ({}, RunOptions(args=())),
        ({"Cmd": ["x"]}, RunOptions(entrypoint=())),
    ],
)
def test_no_command(rootfs: Path, image: dict[str, Any], opts: RunOptions) -> None:
    with pytest.raises(InvalidArgument) as exc:
        build_spec(image, opts, rootfs)
    assert str(exc.value) == "no command specified"


def test_env_merge_order(rootfs: Path) -> None:
    opts = RunOptions(env=("MODE=dev", "EXTRA=1", "LANG"))
    env = build_spec(IMAGE, opts, rootfs)["process"]["env"]
    # The image's PATH replaces the default in place; -e replaces by key; a bare key unsets.
    assert env == ["PATH=/opt/bin:/bin", "MODE=dev", "EXTRA=1"]


def test_default_path_and_tty_term(rootfs: Path) -> None:
    spec = build_spec({"Cmd": ["sh"], "Env": ["A=1"]}, RunOptions(tty=True), rootfs)
    assert spec["process"]["env"] == [DEFAULT_PATH, "A=1", "TERM=xterm"]
    assert spec["process"]["terminal"] is True
    assert build_spec({"Cmd": ["sh"]}, RunOptions(), rootfs)["process"]["terminal"] is False


def test_workdir(rootfs: Path) -> None:
    assert build_spec(IMAGE, RunOptions(), rootfs)["process"]["cwd"] == "/srv"
    assert build_spec(IMAGE, RunOptions(workdir="/tmp"), rootfs)["process"]["cwd"] == "/tmp"
    assert build_spec({"Cmd": ["sh"]}, RunOptions(), rootfs)["process"]["cwd"] == "/"
    with pytest.raises(InvalidArgument, match="working directory"):
        build_spec(IMAGE, RunOptions(workdir="rel"), rootfs)


def test_user_from_image_and_override(rootfs: Path) -> None:
    user = build_spec(IMAGE, RunOptions(), rootfs)["process"]["user"]
    assert user == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 50]}
    user = build_spec(IMAGE, RunOptions(user="0"), rootfs)["process"]["user"]
    assert user == {"uid": 0, "gid": 0, "additionalGids": [0]}
    with pytest.raises(InvalidArgument, match="unable to find user ghost: no matching entries"):
        build_spec(IMAGE, RunOptions(user="ghost"), rootfs)


def test_defaults_match_containerd(rootfs: Path) -> None:
    spec = build_spec({"Cmd": ["sh"]}, RunOptions(hostname="box"), rootfs)
    proc, linux = spec["process"], spec["linux"]
    assert spec["root"] == {"path": str(rootfs), "readonly": False}
    assert spec["hostname"] == "box"
    assert set(proc["capabilities"]["bounding"]) == set(DEFAULT_CAPS)
    assert proc["capabilities"]["effective"] == proc["capabilities"]["bounding"]
    assert len(DEFAULT_CAPS) == 14
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert proc["noNewPrivileges"] is True
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                     "/sys/fs/cgroup"]  # fmt: skip
    sysfs = spec["mounts"][5]
    assert sysfs["type"] == "sysfs" and "ro" in sysfs["options"]
    assert "ro" in spec["mounts"][6]["options"]
    assert {n["type"] for n in linux["namespaces"]} == {"pid", "network", "ipc", "uts", "mount"}
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert "uidMappings" not in linux


def test_net_host_shares_network_and_binds_resolver_files(rootfs: Path) -> None:
    spec = build_spec({"Cmd": ["sh"]}, RunOptions(net="host"), rootfs)
    assert "network" not in {n["type"] for n in spec["linux"]["namespaces"]}
    binds = {m["destination"]: m for m in spec["mounts"] if m["type"] == "bind"}
    assert binds["/etc/resolv.conf"]["source"] == "/etc/resolv.conf"
    assert binds["/etc/hosts"]["options"] == ["rbind", "ro"]


def test_read_only_and_volumes(rootfs: Path, tmp_path: Path) -> None:
    opts = RunOptions(read_only=True, volumes=(parse_volume(f"{tmp_path}:/data:ro"),
                                               parse_volume("/srv/x:/x")))  # fmt: skip
    spec = build_spec({"Cmd": ["sh"]}, opts, rootfs)
    assert spec["root"]["readonly"] is True
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert binds == [
        {"destination": "/data", "type": "bind", "source": str(tmp_path),
         "options": ["rbind", "ro"]},
        {"destination": "/x", "type": "bind", "source": "/srv/x", "options": ["rbind", "rw"]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "volume"),
    [
        ("/a:/b", Volume(Path("/a"), "/b", False)),
        ("/a:/b:ro", Volume(Path("/a"), "/b", True)),
        ("/a:/b/../c/:rw", Volume(Path("/a"), "/c", False)),
    ],
)
def test_parse_volume(text: str, volume: Volume) -> None:
    assert parse_volume(text) == volume


@pytest.mark.parametrize("text", ["/a", "named:/b", "/a:rel", "/a:/b:rx", "/a:/b:ro:x", ":/b"])
def test_parse_volume_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid volume specification"):
        parse_volume(text)


def test_rootless_shape(rootfs: Path) -> None:
    spec = build_spec({"Cmd": ["sh"]}, RunOptions(rootless=True), rootfs)
    linux = spec["linux"]
    assert "user" in {n["type"] for n in linux["namespaces"]}
    assert "network" in {n["type"] for n in linux["namespaces"]}
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "resources" not in linux
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "none" and "rbind" in sys_mount["options"]
    devpts = next(m for m in spec["mounts"] if m["destination"] == "/dev/pts")
    assert not any(o.startswith("gid=") for o in devpts["options"])
    assert spec["process"]["user"] == {"uid": 0, "gid": 0, "additionalGids": []}
    host = build_spec({"Cmd": ["sh"]}, RunOptions(rootless=True, net="host"), rootfs)
    assert "network" not in {n["type"] for n in host["linux"]["namespaces"]}


def test_rootless_rejects_unmapped_user(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="rootless"):
        build_spec(IMAGE, RunOptions(rootless=True), rootfs)


def test_rootless_with_subordinate_ranges_maps_them_and_takes_any_mapped_user(
        rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As inside `unshare --map-root-user --map-users=100000,1,65536 --map-groups=…`.
    for name, text in (("UID_MAP", "0 1000 1\n1 100000 65536\n"),
                       ("GID_MAP", "0 1000 1\n1 100000 65536\n"), ("SETGROUPS", "allow\n")):
        (tmp_path / name).write_text(text)
        monkeypatch.setattr(f"snapfs.sys.userns.{name}", tmp_path / name)
    spec = build_spec({"Cmd": ["sh"]}, RunOptions(rootless=True, user="1000:42"), rootfs)
    # runc maps the ids of snapfs's namespace to themselves: the container sees the same ids.
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 0, "size": 1},
                                            {"containerID": 1, "hostID": 1, "size": 65536}]
    assert spec["linux"]["gidMappings"] == spec["linux"]["uidMappings"]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 42, "additionalGids": [42, 50]}
    (tmp_path / "SETGROUPS").write_text("deny\n")  # as after an unprivileged gid_map write
    denied = build_spec({"Cmd": ["sh"]}, RunOptions(rootless=True, user="1000:42"), rootfs)
    assert denied["process"]["user"] == {"uid": 1000, "gid": 42, "additionalGids": []}
    devpts = next(m for m in spec["mounts"] if m["destination"] == "/dev/pts")
    assert "gid=5" in devpts["options"]  # tty exists in here
    with pytest.raises(InvalidArgument, match=r"^user 70000: uid 70000 is not mapped in this "
                       r"rootless user namespace \(mapped: 0, 1-65536\)"):
        build_spec({"Cmd": ["sh"]}, RunOptions(rootless=True, user="70000"), rootfs)


def test_stop_signal() -> None:
    assert stop_signal({}) == 15
    assert stop_signal({"StopSignal": "SIGQUIT"}) == 3
    assert stop_signal({"StopSignal": "int"}) == 2
    assert stop_signal({"StopSignal": "9"}) == 9
    with pytest.raises(InvalidArgument, match="StopSignal"):
        stop_signal({"StopSignal": "SIGNOPE"})
