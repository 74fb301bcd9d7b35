"""Pulling an image into snapshots, the way containerd's unpacker does.

For each layer, bottom up, the snapshot is named by its chain ID. A layer whose snapshot
already exists is skipped. Otherwise ``Prepare`` is called with the remote-snapshot labels: a
snapshotter that can mount the layer lazily commits it itself and answers AlreadyExists
(nothing is downloaded); any other answer is a set of mounts into which the layer is applied
natively. Downloads run in parallel (``download_limit`` at once), and a layer is unpacked
while its blob arrives: the unpacking thread follows the download's ingest file
(``content.follow``), so a layer costs about the longer of its download and its unpacking,
not their sum. Application is sequential because each layer's snapshot is the next one's
parent (its missing directories and hardlink targets come from the layers below), but the
download of layer N+1 overlaps the unpacking of layer N. A snapshot is committed only once
the blob matched its digest and the unpacked stream its diffID; a layer expanding past the
``[unpack] max_expansion`` limits is refused and its snapshot removed.

The ``extract-*`` snapshot a pull unpacks into is named in its lease before it is made, so
``remove_interrupted_pulls`` (run by the next command) can tell one of a killed pull from
one in progress.

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
from content.expansion import ExpansionLimit
from content.follow import FollowedBlob
from content.image import ImageConfig, Manifest, parse_config, parse_manifest
from content.leases import Lease, active_leases, open_lease
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
from snapfs.snapshot.types import Info, Kind, Mount, Snapshots
from snapfs.sys.userns import in_user_namespace

log = logging.getLogger(__name__)

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
INHERITED_PREFIX = "containerd.io/snapshot/"
_IMAGE_LAYERS_LIMIT = 4000  # containerd truncates the layer list to fit a 4096-byte label
EXTRACT_PREFIX = "extract-"
PREPARE_ATTEMPTS = 3  # containerd's unpacker: AlreadyExists, then the chain not found
# The ratio bound never refuses a layer below this many uncompressed bytes: a tar's end
# blocks and record padding alone make a tiny layer "expand" a hundredfold.
RATIO_FLOOR = 256 << 20


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
                 progress: Progress | None = None, leases: Path | None = None,
                 max_ratio: float = 0.0, max_size: int = 0) -> None:
        self._registry = registry
        self._store = store
        self._snapshots = snapshots
        self._images = images
        # None: whiteouts as user.overlay.* xattrs exactly when we run in a user namespace.
        self._userns = in_user_namespace() if userns is None else userns
        self._downloads = trio.CapacityLimiter(download_limit)
        self._downloads.name = "pull-downloads"  # type: ignore[attr-defined]
        # One layer unpacks at a time (each is the next one's parent); its own limiter so
        # that unpacking never waits behind trio's default thread pool.
        self._unpack = trio.CapacityLimiter(1)
        self._unpack.name = "pull-unpack"  # type: ignore[attr-defined]
        self._progress = progress or _NoProgress()
        # The snapfs root whose GC must leave this pull's blobs and snapshots alone until the
        # image record names them (None: no lease, e.g. a store of its own in a test).
        self._leases = leases
        self._lease: Lease | None = None
        # [unpack] max_expansion: uncompressed bytes per compressed byte, and in all (0: none).
        self._max_ratio = max_ratio
        self._max_size = max_size

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
                self._lease = lease
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

    async def _fetch_layer(self, ref: Reference, desc: Descriptor, blob: FollowedBlob) -> None:
        self._progress.layer(desc, "downloading")
        try:
            async with self._downloads:
                info = await self._registry.fetch_blob_into(self._store, ref, desc,
                                                            on_data=blob.update)
        except BaseException as exc:
            blob.fail(exc)  # wakes an unpacking thread waiting for these bytes
            raise
        blob.finish(self._store.blob_path(desc.digest), info.size)
        self._progress.layer(desc, "downloaded", info.size)

    def _limit(self, ref: Reference, desc: Descriptor) -> ExpansionLimit | None:
        """The most uncompressed bytes the layer may expand to, with the why for the error."""
        bounds = []
        if self._max_ratio > 0:
            bounds.append((max(int(self._max_ratio * desc.size), RATIO_FLOOR),
                           f"{self._max_ratio:g} times its {desc.size} compressed bytes"))
        if self._max_size > 0:
            bounds.append((self._max_size, f"{self._max_size} bytes"))
        if not bounds:
            return None
        limit, why = min(bounds)
        return ExpansionLimit(limit, f"layer {desc.digest} of {ref}: expands past {limit} bytes "
                                     f"([unpack] max_expansion: {why}); refused")

    async def _prepare(self, chain: Digest, parent: str, labels: Mapping[str, str]
                       ) -> tuple[str, list[Mount]] | None:
        """The ``extract-*`` snapshot to unpack the layer into, as containerd's unpacker
        makes it; None if the snapshotter committed the layer itself (AlreadyExists, and
        the chain's snapshot is there)."""
        for attempt in range(1, PREPARE_ATTEMPTS + 1):
            key = f"{EXTRACT_PREFIX}{secrets.token_hex(6)}-{chain}"
            if self._lease is not None:
                # Named before it exists: the next command removes it only once we are gone.
                self._lease.add(snapshots=[key])  # one small append to a file we hold open
            try:
                return key, await self._snapshots.prepare(key, parent, labels)
            except AlreadyExists:
                # The remote-snapshot handshake: the snapshotter committed the layer lazily.
                try:
                    await self._snapshots.stat(str(chain))
                    return None
                except NotFound:
                    # Gone again before this Stat (a concurrent rmi or prune): containerd's
                    # unpacker tries again with a new key, three times in all; so do we.
                    if attempt == PREPARE_ATTEMPTS:
                        raise
                    log.info("pull: snapshot %s was committed, then gone; preparing again",
                             chain)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    async def _unpack_layer(self, ref: Reference, index: int, desc: Descriptor, diff_id: Digest,
                            chain: Digest, parent: str, labels: Mapping[str, str],
                            downloads: _Downloads) -> str:
        prepared = await self._prepare(chain, parent, labels)
        if prepared is None:
            self._progress.layer(desc, "lazy")
            return "lazy"
        key, mounts = prepared
        try:
            # This layer is native, so the rest of the image most likely is too: start every
            # remaining download now, and unpack this one as its bytes arrive.
            blob = downloads.start(index)
            upper, lowers = apply_target(mounts)
            limit = self._limit(ref, desc)

            def apply() -> Digest:
                self._progress.layer(desc, "applying")
                with blob.reader() as src:
                    return apply_layer(src, upper, parents=lowers, userns=self._userns,
                                       limit=limit).diff_id

            async with trio.open_nursery() as watch:
                # A thread cannot be cancelled: on cancellation its reader is told to fail.
                watch.start_soon(_abort_on_cancel, blob)
                got = await trio.to_thread.run_sync(apply, limiter=self._unpack)
                watch.cancel_scope.cancel()
            await downloads.wait(index)  # committed (verified) before the reader's end
            if got != diff_id:
                raise DigestMismatch(f"layer {desc.digest.short()} of {ref}",
                                     str(diff_id), str(got))
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
                    # Nothing of a refused or broken layer stays: the dir goes with the key.
                    await self._snapshots.remove(key)
                except Exception:  # the original error matters more than a failed cleanup
                    log.warning("pull %s: could not remove %s", ref, key, exc_info=True)
            raise
        self._progress.layer(desc, "done", desc.size)
        return "native"


class _Downloads:
    """Background downloads of layer blobs, started on demand from a layer index onwards."""

    def __init__(self, nursery: trio.Nursery,
                 fetch: Callable[[Reference, Descriptor, FollowedBlob], Awaitable[None]],
                 ref: Reference, layers: Sequence[Descriptor]) -> None:
        self._nursery = nursery
        self._fetch = fetch
        self._ref = ref
        self._layers = layers
        self._done: dict[int, trio.Event] = {}
        self._blobs: dict[int, FollowedBlob] = {}

    def start(self, index: int) -> FollowedBlob:
        """Start the downloads of layer ``index`` and those above it; ``index``'s blob."""
        for i in range(index, len(self._layers)):
            if i not in self._done:
                self._done[i] = trio.Event()
                self._blobs[i] = FollowedBlob(
                    f"layer {self._layers[i].digest.short()} of {self._ref}")
                self._nursery.start_soon(self._run, i)
        return self._blobs[index]

    async def wait(self, index: int) -> None:
        self.start(index)
        await self._done[index].wait()

    async def _run(self, index: int) -> None:
        await self._fetch(self._ref, self._layers[index], self._blobs[index])
        self._done[index].set()


async def _abort_on_cancel(blob: FollowedBlob) -> None:
    try:
        await trio.sleep_forever()
    finally:
        blob.abort()


async def remove_interrupted_pulls(snapshots: Snapshots, root: Path) -> list[str]:
    """Remove the ``extract-*`` snapshots of pulls that died (SIGKILL, a crash): active ones
    that no live lease of ``root`` names. Their directories (partial extractions) go with
    them. containerd's own keys (``<ns>/<n>/extract-…``) are not ours and stay."""
    leased = await trio.to_thread.run_sync(active_leases, root)
    removed: list[str] = []
    for info in await snapshots.list():
        if (info.kind == Kind.ACTIVE and info.name.startswith(EXTRACT_PREFIX)
                and info.name not in leased.snapshots):
            try:
                await snapshots.remove(info.name)
            except NotFound:
                continue  # another command cleaned it up meanwhile
            log.info("removed %s, left by an interrupted pull", info.name)
            removed.append(info.name)
    return removed
