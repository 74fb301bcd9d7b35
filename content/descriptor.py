"""OCI content descriptors and platforms (image-spec ``descriptor.md``).

Must not fetch anything: descriptors and platforms are values.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out


_GOARCH = {
    "x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


def host_platform() -> Platform:
    """The platform an image must match to run here, in Go's GOOS/GOARCH names."""
    machine = _platform.machine()
    arch = _GOARCH.get(machine, machine)
    variant = "v8" if arch == "arm64" else ("v7" if arch == "arm" else "")
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """``linux/amd64`` or ``linux/arm64/v8``."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: want os/arch[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        try:
            plat = obj.get("platform")
            return cls(
                media_type=str(obj["mediaType"]),
                digest=parse_digest(str(obj["digest"])),
                size=int(obj["size"]),
                annotations=dict(obj.get("annotations") or {}),
                platform=Platform(str(plat["os"]), str(plat["architecture"]),
                                  str(plat.get("variant", ""))) if plat else None,
                urls=tuple(obj.get("urls") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"invalid descriptor {dict(obj)!r}: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        return out
