"""Pulling an image into snapshots, the way containerd's unpacker does.

For each layer, bottom up, the snapshot is named by its chain ID. A layer whose snapshot
already exists is skipped. Otherwise ``Prepare`` is called with the remote-snapshot labels: a
snapshotter that can mount the layer lazily commits it itself and answers AlreadyExists
(nothing is downloaded); any other answer is a set of mounts into which the layer is applied
natively, after the blob was downloaded and verified. Downloads run in parallel; application
is sequential because each layer's snapshot is the next one's parent.

Must not know of FUSE or lazy layers: whether a layer is lazy is the snapshotter's answer to
Prepare.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from content.descriptor import Descriptor, Platform
from content.digest import Digest, digest_bytes
from content.errors import AlreadyExists, DigestMismatch, InvalidArgument, NotFound
from content.image import ImageConfig, Manifest, parse_config, parse_manifest
from content.leases import open_lease
from content.mediatypes import LAYER_TYPES
from content.reference import Reference
from content.registry import Registry, Resolved
from content.store import ContentStore
from content.unpack import apply_layer
from snapfs.app.images import ImageRecord, ImageStore
from snapfs.snapshot.labels import (
    LABEL_CRI_IMAGE_LAYERS,
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_CRI_MANIFEST_DIGEST,
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
)
from snapfs.snapshot.types import Info, Mount, Snapshots
from snapfs.sys.userns import in_user_namespace

log = logging.getLogger(__name__)

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
INHERITED_PREFIX = "containerd.io/snapshot/"
_IMAGE_LAYERS_LIMIT = 4000  # containerd truncates the layer list to fit a 4096-byte label


class Progress(Protocol):
    def image(self, name: str, layers: Sequence[Descriptor]) -> None:
        """The pull of ``name`` starts; these are its layers, bottom first."""

    def layer(self, desc: Descriptor, state: str, done: int = 0) -> None:
        """``state`` is one of: exists, lazy, downloading, downloaded, applying, done."""

    def finish(self) -> None:
        """The pull completed."""


class _NoProgress:
    def image(self, name: str, layers: Sequence[Descriptor]) -> None:
        pass

    def layer(self, desc: Descriptor, state: str, done: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PulledImage:
    record: ImageRecord
    layers: tuple[Descriptor, ...]
    lazy_layers: int
    native_layers: int
    existing_layers: int


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """Chain IDs per the OCI image spec.

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(digest_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


def check_layers(manifest: Manifest, config: ImageConfig, what: str) -> None:
    """The manifest's layers and the config's diff IDs agree, and every layer is a tar."""
    if len(manifest.layers) != len(config.diff_ids):
        raise InvalidArgument(
            f"image {what}: manifest has {len(manifest.layers)} layers "
            f"but config has {len(config.diff_ids)} diff_ids"
        )
    for layer in manifest.layers:
        if layer.media_type not in LAYER_TYPES and "tar" not in layer.media_type:
            raise InvalidArgument(f"image {what}: unsupported layer media type {layer.media_type}")


def apply_target(mounts: Sequence[Mount]) -> tuple[Path, list[Path]]:
    """Where to write a layer given a fresh snapshot's mounts: the upper dir and its lowers."""
    if len(mounts) == 1 and mounts[0].type == "bind":
        return Path(mounts[0].source), []
    if len(mounts) == 1 and mounts[0].type == "overlay":
        opts = dict(o.split("=", 1) for o in mounts[0].options if "=" in o)
        if "upperdir" in opts:
            lowers = [Path(p) for p in opts.get("lowerdir", "").split(":") if p]
            return Path(opts["upperdir"]), lowers
    raise InvalidArgument(f"cannot apply a layer into mounts {list(mounts)!r}")


class Puller:
    """Pulls images through a :class:`Snapshots` implementation (in-process or a daemon)."""

    def __init__(self, registry: Registry, store: ContentStore, snapshots: Snapshots,
                 images: ImageStore, *, userns: bool | None = None, download_limit: int = 3,
                 progress: Progress | None = None, leases: Path | None = None) -> None:
        self._registry = registry
        self._store = store
        self._snapshots = snapshots
        self._images = images
        # None: whiteouts as user.overlay.* xattrs exactly when we run in a user namespace.
        self._userns = in_user_namespace() if userns is None else userns
        self._downloads = trio.CapacityLimiter(download_limit)
        self._unpack = trio.CapacityLimiter(1)
        self._progress = progress or _NoProgress()
        # The snapfs root whose GC must leave this pull's blobs and snapshots alone until the
        # image record names them (None: no lease, e.g. a store of its own in a test).
        self._leases = leases

    async def pull(self, ref: Reference, platform: Platform | None = None) -> PulledImage:
        resolved = await self._registry.resolve(ref, platform)
        manifest = parse_manifest(resolved.manifest_bytes, resolved.descriptor.media_type)
        config_desc = manifest.config
        config_bytes = await self._registry.fetch_blob(ref, config_desc)
        config = parse_config(config_bytes)
        check_layers(manifest, config, str(ref))
        layers, diff_ids = list(manifest.layers), list(config.diff_ids)
        chains = chain_ids(diff_ids)
        with contextlib.ExitStack() as stack:
            if self._leases is not None:
                lease = stack.enter_context(open_lease(self._leases))
                # Referenced before anything is written, as containerd's leases are.
                lease.add(content=[resolved.descriptor.digest, config_desc.digest,
                                   *(d.digest for d in layers)],
                          snapshots=[str(c) for c in chains])
            return await self._pull(ref, resolved, config_desc, config_bytes, layers,
                                    diff_ids, chains)

    async def _pull(self, ref: Reference, resolved: Resolved, config_desc: Descriptor,
                    config_bytes: bytes, layers: list[Descriptor], diff_ids: list[Digest],
                    chains: list[Digest]) -> PulledImage:
        self._store.write_blob(resolved.manifest_bytes, resolved.descriptor.media_type,
                               expected=resolved.descriptor.digest)
        self._store.write_blob(config_bytes, config_desc.media_type, expected=config_desc.digest)
        self._progress.image(str(ref), layers)
        base_labels = {
            LABEL_CRI_IMAGE_REF: str(ref),
            LABEL_CRI_MANIFEST_DIGEST: str(resolved.descriptor.digest),
            LABEL_CRI_IMAGE_LAYERS: ",".join(str(d.digest) for d in layers)[:_IMAGE_LAYERS_LIMIT],
        }
        counts = {"lazy": 0, "native": 0, "exists": 0}
        lazy_before = 0
        async with trio.open_nursery() as nursery:
            downloads = _Downloads(nursery, self._fetch_layer, ref, layers)
            for i, (desc, chain) in enumerate(zip(layers, chains, strict=True)):
                existing = await self._existing(chain, desc.digest)
                if existing is not None:
                    counts["exists"] += 1
                    # A layer that was lazy stays so on a re-pull: LAZY must not flip.
                    lazy_before += LABEL_SNAPSHOT_REF in existing.labels
                    self._progress.layer(desc, "exists")
                    continue
                parent = str(chains[i - 1]) if i else ""
                # As containerd does (FilterInheritedLabels): the layer's own
                # containerd.io/snapshot/ annotations (its TOC digest) travel as labels.
                inherited = {k: v for k, v in desc.annotations.items()
                             if k.startswith(INHERITED_PREFIX)}
                labels = {**base_labels, **inherited, LABEL_SNAPSHOT_REF: str(chain),
                          LABEL_CRI_LAYER_DIGEST: str(desc.digest)}
                kind = await self._unpack_layer(ref, i, desc, diff_ids[i], chain, parent, labels,
                                                downloads)
                counts[kind] += 1
        record = self._images.put(ImageRecord(
            name=str(ref), target=resolved.descriptor, config=config_desc.digest,
            chain_ids=tuple(chains), lazy=counts["lazy"] + lazy_before > 0))
        self._progress.finish()
        return PulledImage(record, tuple(layers), counts["lazy"], counts["native"],
                           counts["exists"])

    async def _existing(self, chain: Digest, layer: Digest) -> Info | None:
        """The chain's snapshot if it may be used as it is. A lazy snapshot made from
        another layer blob is not taken on its word: the Prepare asks the snapshotter, which
        accepts it only once its content is verified (``check_reuse``)."""
        try:
            info = await self._snapshots.stat(str(chain))
        except NotFound:
            return None
        made_from = info.labels.get(LABEL_CRI_LAYER_DIGEST) or info.labels.get(
            LABEL_STARGZ_DIGEST)
        return info if made_from is None or made_from == str(layer) else None

    async def _fetch_layer(self, ref: Reference, desc: Descriptor) -> None:
        self._progress.layer(desc, "downloading")
        async with self._downloads:
            info = await self._registry.fetch_blob_into(self._store, ref, desc)
        self._progress.layer(desc, "downloaded", info.size)

    async def _unpack_layer(self, ref: Reference, index: int, desc: Descriptor, diff_id: Digest,
                            chain: Digest, parent: str, labels: Mapping[str, str],
                            downloads: _Downloads) -> str:
        key = f"extract-{secrets.token_hex(6)}-{chain}"
        try:
            mounts = await self._snapshots.prepare(key, parent, labels)
        except AlreadyExists:
            # The remote-snapshot handshake: the snapshotter committed the layer lazily.
            await self._snapshots.stat(str(chain))
            self._progress.layer(desc, "lazy")
            return "lazy"
        try:
            # This layer is native, so the rest of the image most likely is too: start every
            # remaining download now and apply them in order as they arrive.
            await downloads.wait(index)
            self._progress.layer(desc, "applying")
            upper, lowers = apply_target(mounts)
            result = await trio.to_thread.run_sync(
                lambda: apply_layer(self._store.blob_path(desc.digest), upper,
                                    parents=lowers, userns=self._userns),
                limiter=self._unpack)
            if result.diff_id != diff_id:
                raise DigestMismatch(f"layer {desc.digest.short()} of {ref}",
                                     str(diff_id), str(result.diff_id))
            try:
                await self._snapshots.commit(str(chain), key, {LABEL_UNCOMPRESSED: str(diff_id)})
            except AlreadyExists:
                # A concurrent pull of the same layer committed first (this client holds its
                # snapshot now): use that one, as containerd's unpacker does.
                await self._snapshots.stat(str(chain))
                await self._snapshots.remove(key)
                self._progress.layer(desc, "exists")
                return "exists"
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._snapshots.remove(key)
                except Exception:  # the original error matters more than a failed cleanup
                    log.warning("pull %s: could not remove %s", ref, key, exc_info=True)
            raise
        self._progress.layer(desc, "done", desc.size)
        return "native"


class _Downloads:
    """Background downloads of layer blobs, started on demand from a layer index onwards."""

    def __init__(self, nursery: trio.Nursery,
                 fetch: Callable[[Reference, Descriptor], Awaitable[None]],
                 ref: Reference, layers: Sequence[Descriptor]) -> None:
        self._nursery = nursery
        self._fetch = fetch
        self._ref = ref
        self._layers = layers
        self._done: dict[int, trio.Event] = {}

    async def wait(self, index: int) -> None:
        for i in range(index, len(self._layers)):
            if i not in self._done:
                self._done[i] = trio.Event()
                self._nursery.start_soon(self._run, i)
        await self._done[index].wait()

    async def _run(self, index: int) -> None:
        await self._fetch(self._ref, self._layers[index])
        self._done[index].set()
