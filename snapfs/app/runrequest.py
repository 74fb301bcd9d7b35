"""What ``snapfs run`` was asked to do, as one value: :class:`RunRequest`.

The CLI's flags become a request here (:func:`run_options` reads ``--env-file``s and gives
``-e NAME`` the host's value); the request runs in the foreground (``snapfs.app.run``) or,
for ``-d``, is handed as JSON to a supervising process (``snapfs.app.detach``), which must
run exactly what the foreground would have.

Must not run anything: it builds and (de)serialises values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from runtime.spec import RunOptions, Volume, parse_env_file, volumes_from, with_host_values
from snapfs.app.imageops import PullPolicy
from snapfs.app.records import STOP_TIMEOUT
from snapfs.config import Config, load_config, with_overrides


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    """``--record-profile FILE [--record-seconds N]``: write the files the container reads
    from its start until it exits (or for ``seconds``) to ``dest``."""

    dest: Path
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a command's config came from (file, then flags), so another process can build
    the same one."""

    file: Path | None = None
    root: str | None = None
    state: str | None = None
    address: str | None = None
    permissive: bool = False  # unknown config keys warn instead of failing
    lazy: str | None = None  # --lazy

    def load(self) -> Config:
        return with_overrides(load_config(self.file, permissive=self.permissive),
                              root=self.root, state=self.state, lazy=self.lazy,
                              address=self.address)


@dataclass(frozen=True, slots=True)
class RunRequest:
    image: str
    options: RunOptions
    name: str | None = None
    remove: bool = False
    pull: PullPolicy = "missing"
    platform: str | None = None
    interactive: bool = False
    stop_timeout: float = STOP_TIMEOUT
    quiet: bool = False
    profile: ProfileRequest | None = None
    config: ConfigSource = field(default_factory=ConfigSource)

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "image": self.image, "name": self.name, "remove": self.remove, "pull": self.pull,
            "platform": self.platform, "interactive": self.interactive,
            "stop_timeout": self.stop_timeout, "quiet": self.quiet,
            "profile": None if self.profile is None else
            {"dest": str(self.profile.dest), "seconds": self.profile.seconds},
            "config": {"file": None if self.config.file is None else str(self.config.file),
                       "root": self.config.root, "state": self.config.state,
                       "address": self.config.address, "permissive": self.config.permissive,
                       "lazy": self.config.lazy},
            "options": {
                "args": o.args, "entrypoint": o.entrypoint, "env": o.env, "workdir": o.workdir,
                "user": o.user, "hostname": o.hostname, "net": o.net, "read_only": o.read_only,
                "volumes": [[str(v.source), v.destination, v.read_only] for v in o.volumes],
                "tty": o.tty, "rootless": o.rootless,
            },
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunRequest:
        o, c, p = obj["options"], obj["config"], obj.get("profile")
        options = RunOptions(
            args=None if o["args"] is None else tuple(o["args"]),
            entrypoint=None if o["entrypoint"] is None else tuple(o["entrypoint"]),
            env=tuple(o["env"]), workdir=o["workdir"], user=o["user"], hostname=o["hostname"],
            net=o["net"], read_only=bool(o["read_only"]),
            volumes=tuple(Volume(Path(s), d, bool(ro)) for s, d, ro in o["volumes"]),
            tty=bool(o["tty"]), rootless=bool(o["rootless"]))
        return cls(
            image=obj["image"], options=options, name=obj["name"], remove=bool(obj["remove"]),
            pull=cast(PullPolicy, obj["pull"]), platform=obj["platform"],
            interactive=bool(obj["interactive"]), stop_timeout=float(obj["stop_timeout"]),
            quiet=bool(obj["quiet"]),
            profile=None if p is None else ProfileRequest(Path(p["dest"]), p["seconds"]),
            config=ConfigSource(None if c["file"] is None else Path(c["file"]), c["root"],
                                c["state"], c["address"], bool(c.get("permissive", False)),
                                c.get("lazy")))


def run_options(*, command: Sequence[str], entrypoint: str | None, env: Sequence[str],
                env_files: Sequence[Path], workdir: str | None, user: str | None,
                hostname: str, net: str, read_only: bool, volumes: Sequence[str], tty: bool,
                environ: Mapping[str, str] | None = None) -> RunOptions:
    """docker's flags as RunOptions: ``--env-file``s first, then ``-e`` (later wins), and a
    bare ``NAME`` in either takes the host's value (left out when the host has none)."""
    environ = os.environ if environ is None else environ
    from_files: list[str] = []
    for path in env_files:
        from_files += parse_env_file(path.read_text(), str(path))
    if net not in ("none", "host"):
        raise ValueError(f"network mode {net!r}")  # argparse's choices keep this out
    return RunOptions(
        args=tuple(command) if command else None,
        entrypoint=(entrypoint,) if entrypoint else None,
        env=tuple(with_host_values([*from_files, *env], environ)), workdir=workdir,
        user=user, hostname=hostname, net=cast(Any, net), read_only=read_only,
        volumes=volumes_from(volumes), tty=tty, rootless=os.geteuid() != 0)


__all__ = ["ConfigSource", "ProfileRequest", "RunRequest", "run_options"]
