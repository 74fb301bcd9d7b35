"""``snapfs profile show|push|rm IMAGE``: this node's startup profiles, and publishing them.

IMAGE names an image manifest: the local image of that name (``snapfs images``), else the
manifest the registry resolves it to. Its local profile is the one ``snapfs.lazy.profiles``
recorded (``snapfs.lazy.profilestore``); the published one is an OCI artifact whose subject
is the manifest (``content.profiledoc``), pushed with the registry credentials every command
uses and listed through the referrers API or the ``sha256-<hex>`` tag
(``content.referrers``). Pushing needs push rights; a registry may refuse to delete (remote
``rm`` then takes the artifact off the fallback tag, where it has one, and says what is left).

Must not print: results are returned.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import trio

from content.descriptor import Descriptor
from content.digest import Digest
from content.errors import NotFound
from content.profiledoc import ARTIFACT_TYPE, Profile, artifact_manifest, encode_document
from content.reference import Reference
from content.referrers import EMPTY
from content.registry import Registry, open_registry
from snapfs.app.imageops import parse_image_ref, record_locator
from snapfs.app.images import ImageRecord, ImageStore
from snapfs.config import Config
from snapfs.lazy.profilestore import ProfileStore
from snapfs.lazy.published import fetch_published

log = logging.getLogger(__name__)

Where = Literal["auto", "local", "remote"]


@dataclass(frozen=True, slots=True)
class Shown:
    profile: Profile
    source: str  # "local" | "registry"
    location: str  # the local file, or the artifact's digest


@dataclass(frozen=True, slots=True)
class Pushed:
    profile: Profile
    artifact: Digest
    replaced: list[Digest]  # earlier profile artifacts taken off the list


@dataclass(frozen=True, slots=True)
class Removed:
    manifest: Digest
    local: bool  # a local profile was removed
    deleted: list[Digest]  # artifacts the registry deleted
    kept: list[tuple[Digest, str]]  # artifacts it would not delete, and what became of them
    still_listed: bool = False  # one of those is still found by a lookup


def _local_record(config: Config, ref: Reference) -> ImageRecord | None:
    with ImageStore(config.root) as images:
        for record in images.list():
            if record.name == str(ref) or (ref.digest is not None
                                           and record.target.digest == ref.digest
                                           and record_locator(record) == ref.locator):
                return record
    return None


@asynccontextmanager
async def open_config_registry(config: Config) -> AsyncIterator[Registry]:
    async with open_registry(hosts_dir=config.registry.hosts_dir(),
                             docker_config=config.registry.docker_config_path(),
                             timeout=config.registry.read_timeout,
                             connect_timeout=config.registry.connect_timeout) as registry:
        yield registry


async def _target(config: Config, ref: Reference,
                  registry: Registry) -> tuple[Descriptor, tuple[Digest, ...] | None]:
    """The image manifest IMAGE names: the local image's (``snapfs pull``/``run``), else the
    one the registry resolves it to (an image containerd pulled); with its layers when the
    registry was asked."""
    record = await trio.to_thread.run_sync(_local_record, config, ref)
    if record is not None:
        return record.target, None
    resolved = await registry.resolve(ref)
    layers = tuple(Descriptor.from_json(d).digest for d in resolved.manifest.get("layers") or [])
    return resolved.descriptor, layers


async def _published(registry: Registry, ref: Reference, manifest: Descriptor,
                     layers: tuple[Digest, ...] | None) -> Shown | None:
    found = await registry.referrers(ref, manifest.digest, ARTIFACT_TYPE)
    if not found:
        return None
    profile = await fetch_published(registry, ref, manifest.digest, found[-1].desc, layers)
    return Shown(profile, "registry", str(found[-1].desc.digest))


async def show_profile(config: Config, image: str, where: Where = "auto") -> Shown:
    """The local profile of IMAGE (``auto``: else the published one), or the published one."""
    ref = parse_image_ref(image)
    store = ProfileStore(config.root)
    async with open_config_registry(config) as registry:
        manifest, layers = await _target(config, ref, registry)
        if where != "remote":
            profile = await trio.to_thread.run_sync(store.read, manifest.digest)
            if profile is not None:
                return Shown(profile, "local", str(store.path(manifest.digest)))
            if where == "local":
                raise NotFound(f"image {ref}: no local profile of manifest "
                               f"{manifest.digest.short()} (one is recorded when its first "
                               "container starts on lazy layers here)")
        shown = await _published(registry, ref, manifest, layers)
    if shown is None:
        raise NotFound(f"image {ref}: no profile {'recorded here or ' * (where == 'auto')}"
                       f"published for manifest {manifest.digest.short()}")
    return shown


async def push_profile(config: Config, image: str) -> Pushed:
    """Publish IMAGE's local profile as a referrer of its manifest; earlier published
    profiles of that manifest are taken off the list."""
    ref = parse_image_ref(image)
    async with open_config_registry(config) as registry:
        manifest, _ = await _target(config, ref, registry)
        profile = await trio.to_thread.run_sync(ProfileStore(config.root).read,
                                                manifest.digest)
        if profile is None:
            raise NotFound(f"image {ref}: no local profile of manifest "
                           f"{manifest.digest.short()} to push (run a container of it first)")
        blob = encode_document(profile)
        doc = artifact_manifest(manifest.media_type, manifest.digest, manifest.size, blob)
        earlier = await registry.referrers(ref, manifest.digest, ARTIFACT_TYPE)
        await registry.push_blob(ref, EMPTY)
        await registry.push_blob(ref, blob)
        pushed = await registry.push_referrer(ref, doc, ARTIFACT_TYPE)
        replaced = []
        for old in earlier:
            if old.desc.digest != pushed.desc.digest:
                await registry.remove_referrer(ref, manifest.digest, old.desc.digest)
                replaced.append(old.desc.digest)
    log.info("%s: profile of manifest %s pushed as %s (%d file(s))", ref.locator,
             manifest.digest.short(), pushed.desc.digest.short(), len(profile.files))
    return Pushed(profile, pushed.desc.digest, replaced)


async def remove_profile(config: Config, image: str, *, remote: bool = False) -> Removed:
    """Remove IMAGE's local profile, and with ``remote`` its published ones."""
    ref = parse_image_ref(image)
    deleted: list[Digest] = []
    kept: list[tuple[Digest, str]] = []
    listed = False
    async with open_config_registry(config) as registry:
        manifest, _ = await _target(config, ref, registry)
        local = await trio.to_thread.run_sync(ProfileStore(config.root).remove,
                                              manifest.digest)
        if not remote:
            return Removed(manifest.digest, local, deleted, kept)
        for found in await registry.referrers(ref, manifest.digest, ARTIFACT_TYPE):
            if await registry.remove_referrer(ref, manifest.digest, found.desc.digest):
                deleted.append(found.desc.digest)
                continue
            still = await registry.referrers(ref, manifest.digest, ARTIFACT_TYPE)
            if any(r.desc.digest == found.desc.digest for r in still):
                listed = True
                kept.append((found.desc.digest, "the registry refuses to delete it and still "
                             "lists it: still published"))
            else:
                kept.append((found.desc.digest, "the registry refuses to delete it; taken off "
                             f"the {ARTIFACT_TYPE} referrers list (the manifest stays, found "
                             "by digest only)"))
    return Removed(manifest.digest, local, deleted, kept, listed)


__all__ = ["Pushed", "Removed", "Shown", "push_profile", "remove_profile", "show_profile"]
