"""OCI / Docker image documents: building them as bytes, and parsing what a registry returns.

Building (tests, demo, benchmarks): layers → config JSON (``rootfs.diff_ids``, history,
platform) → manifest JSON, each with its digest; several images → an index. Output is
deterministic: sorted keys, compact separators, a fixed ``created`` time by default.

Parsing (the puller): :func:`parse_manifest`, :func:`parse_index`, :func:`parse_config`
raise InvalidArgument naming the document and the missing or malformed field.

Must not fetch or push: bytes in, values out, and back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from content import mediatypes as mt
from content.compression import CompressionName, compress, media_type_for
from content.descriptor import Descriptor, Platform, host_platform
from content.digest import Digest, digest_bytes, parse_digest
from content.errors import InvalidArgument

EPOCH = "1970-01-01T00:00:00Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Layer:
    blob: bytes
    media_type: str
    diff_id: Digest
    annotations: Mapping[str, str] = field(default_factory=dict)
    digest: Digest = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", digest_bytes(self.blob))

    @property
    def size(self) -> int:
        return len(self.blob)

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.blob), dict(self.annotations))


def make_layer(
    tar: bytes,
    compression: CompressionName = "gzip",
    *,
    oci: bool = True,
    annotations: Mapping[str, str] | None = None,
) -> Layer:
    """A layer blob from an uncompressed tar; ``diff_id`` is the sha256 of ``tar``."""
    return Layer(
        blob=compress(tar, compression),
        media_type=media_type_for(compression, oci=oci),
        diff_id=digest_bytes(tar),
        annotations=dict(annotations or {}),
    )


@dataclass(frozen=True, slots=True)
class Image:
    manifest: bytes
    config: bytes
    layers: tuple[Layer, ...]
    descriptor: Descriptor  # of the manifest, with its platform
    config_descriptor: Descriptor

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type


_DOCKER_LAYER_TYPE = {mt.OCI_LAYER_GZIP: mt.DOCKER_LAYER_GZIP}


def make_image(
    layers: Sequence[Layer],
    config: Mapping[str, Any] | None = None,
    platform: Platform | None = None,
    *,
    oci: bool = True,
    created: str = EPOCH,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """An image of ``layers`` (bottom first) with runtime ``config`` (``Entrypoint``,
    ``Cmd``, ``Env``, ``WorkingDir``, ``User``, … as in the image spec's ``config``).

    With ``oci=False`` the manifest and config use Docker schema 2 media types (gzip layers
    are relabelled with the Docker type; others keep their OCI type, which containerd
    accepts in a Docker manifest).
    """
    plat = platform or host_platform()
    cfg: dict[str, Any] = {
        "architecture": plat.architecture,
        "os": plat.os,
        "created": created,
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in layers]},
        "history": [
            {"created": created, "created_by": f"snapfs layer {i}"} for i in range(len(layers))
        ],
    }
    if plat.variant:
        cfg["variant"] = plat.variant
    config_bytes = _dumps(cfg)
    config_desc = Descriptor(
        mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG, digest_bytes(config_bytes), len(config_bytes)
    )
    layer_descs = []
    for layer in layers:
        d = layer.descriptor()
        if not oci:
            d = Descriptor(_DOCKER_LAYER_TYPE.get(d.media_type, d.media_type), d.digest, d.size,
                           d.annotations)
        layer_descs.append(d)
    manifest_type = mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layer_descs],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_bytes = _dumps(manifest)
    desc = Descriptor(manifest_type, digest_bytes(manifest_bytes), len(manifest_bytes),
                      platform=plat)
    return Image(manifest_bytes, config_bytes, tuple(layers), desc, config_desc)


def make_index(images: Sequence[Image], *, oci: bool = True) -> bytes:
    """A multi-platform index (OCI) or manifest list (Docker) of ``images``."""
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX if oci else mt.DOCKER_MANIFEST_LIST,
        "manifests": [img.descriptor.to_json() for img in images],
    }
    return _dumps(index)


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    os: str
    architecture: str
    variant: str
    diff_ids: tuple[Digest, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)  # the whole config document

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


def _load(what: str, data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _media_type(what: str, obj: Mapping[str, Any], given: str | None, allowed: frozenset[str],
                default: str) -> str:
    inner = obj.get("mediaType")
    media_type = given or inner or default
    if inner and inner not in allowed:
        raise InvalidArgument(f"{what}: mediaType {inner!r} is not one of {sorted(allowed)}")
    if media_type not in allowed:
        raise InvalidArgument(f"{what}: media type {media_type!r} is not one of {sorted(allowed)}")
    if obj.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what}: schemaVersion {obj.get('schemaVersion')!r}, want 2")
    return str(media_type)


def _descriptors(what: str, obj: Mapping[str, Any], key: str) -> tuple[Descriptor, ...]:
    items = obj.get(key)
    if not isinstance(items, list):
        raise InvalidArgument(f"{what}: missing or malformed {key!r} list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{what}: {key}[{i}] is not an object")
        out.append(Descriptor.from_json(item))
    return tuple(out)


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest:
    """An image manifest (OCI or Docker schema 2). ``media_type`` is the Content-Type the
    registry gave, if any; the document's own ``mediaType`` must agree with the kind."""
    what = "image manifest"
    obj = _load(what, data)
    if obj.get("mediaType") in mt.INDEX_TYPES or media_type in mt.INDEX_TYPES:
        raise InvalidArgument(f"{what}: document is an index, not a manifest")
    mtype = _media_type(what, obj, media_type, mt.MANIFEST_TYPES, mt.OCI_MANIFEST)
    cfg = obj.get("config")
    if not isinstance(cfg, dict):
        raise InvalidArgument(f"{what}: missing or malformed 'config' descriptor")
    return Manifest(mtype, Descriptor.from_json(cfg), _descriptors(what, obj, "layers"),
                    dict(obj.get("annotations") or {}))


def parse_index(data: bytes, media_type: str | None = None) -> Index:
    """An OCI index or Docker manifest list."""
    what = "image index"
    obj = _load(what, data)
    mtype = _media_type(what, obj, media_type, mt.INDEX_TYPES, mt.OCI_INDEX)
    return Index(mtype, _descriptors(what, obj, "manifests"), dict(obj.get("annotations") or {}))


def _strings(what: str, obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what}: config.{key} must be a list of strings")
    return tuple(value)


def parse_config(data: bytes) -> ImageConfig:
    """An image config: platform, ``rootfs.diff_ids`` and the runtime settings."""
    what = "image config"
    obj = _load(what, data)
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidArgument(f"{what}: missing rootfs.diff_ids")
    diff_ids = tuple(parse_digest(str(d)) for d in rootfs["diff_ids"])
    for key in ("os", "architecture"):
        if not isinstance(obj.get(key), str):
            raise InvalidArgument(f"{what}: missing {key!r}")
    run = obj.get("config") or {}
    if not isinstance(run, dict):
        raise InvalidArgument(f"{what}: 'config' is not an object")
    return ImageConfig(
        os=obj["os"],
        architecture=obj["architecture"],
        variant=str(obj.get("variant") or ""),
        diff_ids=diff_ids,
        entrypoint=_strings(what, run, "Entrypoint"),
        cmd=_strings(what, run, "Cmd"),
        env=_strings(what, run, "Env"),
        working_dir=str(run.get("WorkingDir") or ""),
        user=str(run.get("User") or ""),
        raw=obj,
    )
