"""OCI runtime specs (config.json) built from an image config, as containerd builds them.

This follows containerd's ``populateDefaultUnixSpec`` plus ``oci.WithImageConfig``:
``args`` are Entrypoint + Cmd (a command override replaces Cmd; an entrypoint override
replaces Entrypoint and drops Cmd, as docker does), the environment is the default PATH,
then the image's Env, then ``-e`` overrides by key. The rootless variant has the shape of
``runc spec --rootless``; it is used when asked for and whenever this process runs inside a
user namespace (``snapfs`` re-executes itself in one when started without root), where euid
is 0 but the root-only shape (cgroup device rules, ``gid=5`` devpts, fresh sysfs) cannot work.

Must not write files or run runc: it computes the OCI config as a value.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from runtime.errors import InvalidArgument
from runtime.users import ExecUser, resolve_user
from snapfs.sys.userns import (
    IdRange,
    gid_ranges,
    in_user_namespace,
    is_mapped,
    setgroups_allowed,
    uid_ranges,
)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd's default capability set (oci/spec.go, defaultUnixCaps).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/sys/devices/virtual/powercap", "/proc/scsi",
)  # fmt: skip

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]
@dataclass(frozen=True, slots=True)
class Volume:
    """A bind mount from ``-v SRC:DST[:ro]``."""

    source: Path
    destination: str
    read_only: bool = False


def parse_volume(text: str) -> Volume:
    """Parse ``SRC:DST[:ro|rw]``; SRC must be an absolute host path (no named volumes)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume specification {text!r}: expected SRC:DST[:ro]")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidArgument(f"invalid volume specification {text!r}: unknown mode {mode!r}")
    if not src.startswith("/"):
        raise InvalidArgument(
            f"invalid volume specification {text!r}: source must be an absolute path"
        )
    if not dst.startswith("/"):
        raise InvalidArgument(
            f"invalid volume specification {text!r}: destination must be an absolute path"
        )
    return Volume(Path(src), os.path.normpath(dst), mode == "ro")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``snapfs run`` flags ask for; None means "as the image says"."""

    args: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str = "snapfs"
    net: Literal["none", "host"] = "none"
    read_only: bool = False
    volumes: tuple[Volume, ...] = field(default=())
    tty: bool = False
    rootless: bool = False


def merge_env(base: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """containerd's replaceOrAppendEnvValues: later values win by key; ``KEY`` alone unsets."""
    out: dict[str, str | None] = {}
    for item in (*base, *overrides):
        key, eq, _ = item.partition("=")
        out[key] = item if eq else None  # replaced in place, as containerd does
    return [v for v in out.values() if v is not None]


def command_args(image_config: Mapping[str, Any], opts: RunOptions) -> list[str]:
    """Entrypoint + Cmd after overrides; InvalidArgument when nothing is left to run."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    cmd = list(image_config.get("Cmd") or [])
    if opts.entrypoint is not None:
        entrypoint, cmd = list(opts.entrypoint), []
    if opts.args is not None:
        cmd = list(opts.args)
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument("no command specified")
    return args


def parse_signal(text: str, what: str = "signal") -> int:
    """``SIGTERM``, ``TERM`` or ``15`` → 15; InvalidArgument naming ``what`` otherwise."""
    name = text.strip().upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise InvalidArgument(f"{what}: invalid signal {text!r}") from None


def stop_signal(image_config: Mapping[str, Any]) -> int:
    """The image's StopSignal (``SIGTERM``, ``TERM`` or ``15``), SIGTERM by default."""
    return parse_signal(str(image_config.get("StopSignal") or "SIGTERM"),
                        "image config: StopSignal")


def parse_env_file(text: str, name: str) -> list[str]:
    """docker's ``--env-file``: ``KEY=VALUE`` or ``KEY`` lines; blank lines and ``#``
    comments skipped; the value is taken as written (no quotes removed, no expansion)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key = stripped.partition("=")[0]
        if not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"env file {name}, line {n}: variable {key!r} has white "
                                  "space or is empty")
        out.append(stripped)
    return out


def with_host_values(items: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """``-e NAME`` (no ``=``) takes the host's value, as docker does; a NAME the host does not
    have is left out. ``NAME=VALUE`` stays as given."""
    out = []
    for item in items:
        if "=" in item:
            out.append(item)
        elif item in environ:
            out.append(f"{item}={environ[item]}")
    return out


def _default_mounts(rootless: bool, tty_gid: bool) -> list[dict[str, Any]]:
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if tty_gid:
        devpts.append("gid=5")  # gid 5 (tty) exists unless the user namespace maps only 0
    sys_mount: dict[str, Any] = (
        {"destination": "/sys", "type": "none", "source": "/sys",
         "options": ["rbind", *_NOSUID_NOEXEC_NODEV, "ro"]}
        if rootless  # sysfs cannot be mounted fresh without owning the network namespace
        else {"destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": [*_NOSUID_NOEXEC_NODEV, "ro"]}
    )  # fmt: skip
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": list(_NOSUID_NOEXEC_NODEV)},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": [*_NOSUID_NOEXEC_NODEV, "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": list(_NOSUID_NOEXEC_NODEV)},
        sys_mount,
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*_NOSUID_NOEXEC_NODEV, "relatime", "ro"]},
    ]  # fmt: skip


def _bind(source: str | Path, destination: str, read_only: bool) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": str(source),
            "options": ["rbind", "ro" if read_only else "rw"]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class IdMaps:
    """The ids a rootless container maps: ``inside`` its id, ``outside`` the id runc maps it
    to (an id of snapfs's own user namespace, or the caller's for a spec made outside one)."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    setgroups: bool  # whether supplementary groups can be set in there

    @classmethod
    def here(cls) -> IdMaps:
        """Inside a user namespace every id it maps, as itself (root only, or root and the
        user's subordinate range); outside, root as the caller's own ids."""
        if in_user_namespace():
            def same(ranges: tuple[IdRange, ...]) -> tuple[IdRange, ...]:
                return tuple(IdRange(r.inside, r.inside, r.count) for r in ranges)
            return cls(same(uid_ranges()), same(gid_ranges()), setgroups_allowed())
        return cls((IdRange(0, os.geteuid(), 1),), (IdRange(0, os.getegid(), 1),), False)

    def spec(self) -> dict[str, list[dict[str, int]]]:
        def lines(ranges: tuple[IdRange, ...]) -> list[dict[str, int]]:
            return [{"containerID": r.inside, "hostID": r.outside, "size": r.count}
                    for r in ranges]
        return {"uidMappings": lines(self.uids), "gidMappings": lines(self.gids)}


def _user_section(user: ExecUser, maps: IdMaps | None) -> dict[str, Any]:
    if maps is None:
        return {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)}
    for kind, id_, ranges in (("uid", user.uid, maps.uids), ("gid", user.gid, maps.gids)):
        if not is_mapped(id_, ranges):
            mapped = ", ".join(f"{r.inside}-{r.inside + r.count - 1}" if r.count > 1
                               else str(r.inside) for r in ranges)
            raise InvalidArgument(
                f"user {user.name or user.uid}: {kind} {id_} is not mapped in this rootless "
                f"user namespace (mapped: {mapped}); add ranges to /etc/subuid and /etc/subgid")
    extra = [g for g in user.additional_gids if is_mapped(g, maps.gids)] if maps.setgroups else []
    return {"uid": user.uid, "gid": user.gid, "additionalGids": extra}


def _namespaces(net: str, rootless: bool) -> list[dict[str, str]]:
    kinds = ["pid", "ipc", "uts", "mount"]
    if net == "none":
        kinds.insert(1, "network")
    if rootless:
        kinds.append("user")
    return [{"type": k} for k in kinds]


def build_spec(image_config: Mapping[str, Any], opts: RunOptions, rootfs: Path) -> dict[str, Any]:
    """The config.json for running ``image_config`` (the image config's ``config``) on ``rootfs``.

    Pure apart from reading the rootfs's /etc/passwd and /etc/group for the user.
    """
    if opts.net not in ("none", "host"):
        raise InvalidArgument(f"network mode {opts.net!r}: expected 'none' or 'host'")
    args = command_args(image_config, opts)
    if not opts.rootless and in_user_namespace():
        opts = replace(opts, rootless=True)
    rootfs = Path(os.path.abspath(rootfs))
    user = resolve_user(rootfs, opts.user if opts.user is not None else
                        str(image_config.get("User") or ""))  # fmt: skip
    env = merge_env([DEFAULT_PATH], image_config.get("Env") or [])
    if opts.tty:
        env = merge_env(env, ["TERM=xterm"])
    env = merge_env(env, opts.env)
    cwd = opts.workdir or str(image_config.get("WorkingDir") or "") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r}: must be an absolute path")

    maps = IdMaps.here() if opts.rootless else None
    mounts = _default_mounts(opts.rootless, maps is None or is_mapped(5, maps.gids))
    if opts.net == "host":
        mounts += [_bind("/etc/resolv.conf", "/etc/resolv.conf", True),
                   _bind("/etc/hosts", "/etc/hosts", True)]  # fmt: skip
    mounts += [_bind(v.source, v.destination, v.read_only) for v in opts.volumes]

    caps = list(DEFAULT_CAPS)
    linux: dict[str, Any] = {
        "namespaces": _namespaces(opts.net, opts.rootless),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if maps is not None:
        linux.update(maps.spec())
    else:
        # Without delegation a rootless runc cannot write cgroups, so only root gets resources.
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}

    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": opts.tty,
            "user": _user_section(user, maps),
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": opts.read_only},
        "hostname": opts.hostname,
        "mounts": mounts,
        "linux": linux,
    }


def volumes_from(specs: Sequence[str]) -> tuple[Volume, ...]:
    """Parse every ``-v`` flag."""
    return tuple(parse_volume(s) for s in specs)
