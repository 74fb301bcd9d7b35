"""Startup profiles on the lazy path: recorded for an image's first container, looked up and
prefetched on every lazy pull. The snapshotter's ``PrepareObserver``.

    lazy layer committed (Prepare with remote labels)          remote_prepared
      └─ the image manifest it belongs to (labels, or one manifest request per pull)
           └─ once per manifest: one referrers lookup (artifact type
              content.profiledoc.ARTIFACT_TYPE, ``[profile] lookup_timeout``), the profile
              fetched by digest and parsed (wrong subject, garbage: one warning, ignored)
                └─ the layer's files of it, checked against its verified TOC (a file it
                   does not hold: one warning, the profile ignored), fetched at startup
                   priority in merged Range requests (``snapfs.lazy.schedule``)
    active snapshot about to be made on lazy layers (a container)   before_active
      ├─ waits, at most ``[profile] wait`` seconds, for that lookup and prefetch
      └─ no local profile of the manifest yet: records its still-lazy layers' reads for
         ``record_seconds`` (``snapfs.lazy.profile.LocalRecording``), then stores them
         (``snapfs.lazy.profilestore``)

A profile is never trusted with content: it only says what to fetch first, and every byte
fetched is verified against the layer's TOC as always. Lookups are cached per manifest for
the life of the process (negative answers too), so a pull without a profile costs one
request (the registry's referrers API, or the fallback tag on a registry known to lack it).

Must not publish, and must not fail a Prepare: every error here is logged and swallowed.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from content.descriptor import Descriptor
from content.digest import Digest, parse_digest
from content.errors import ContentError, InvalidArgument
from content.image import parse_index, parse_manifest
from content.mediatypes import INDEX_TYPES
from content.profiledoc import ARTIFACT_TYPE, Profile, make_profile
from content.reference import Reference
from snapfs.config import Config
from snapfs.lazy.gzsource import ReferrerSource
from snapfs.lazy.layers import LazyLayers
from snapfs.lazy.profile import LocalRecording
from snapfs.lazy.profilestore import ProfileStore, attribute
from snapfs.lazy.published import fetch_published
from snapfs.lazy.schedule import fetch_startup
from snapfs.lazy.source import layer_id, layer_source, listed_layers
from snapfs.lazy.trust import LABEL_MANIFEST_DIGEST
from snapfs.lazy.view import LazyLayerView

log = logging.getLogger(__name__)

_CACHED = 64  # manifests remembered
_TAG_TTL = 60.0  # a tag resolved for one pull serves its other layers' Prepares
# A profile's files are scattered over their layer: holes up to this size between them are
# fetched along, so that the set takes few requests (128 KiB: about half of what a 100 Mbit/s
# link with 20 ms RTT carries in one round trip, so a hole costs less than a request).
BRIDGE = 128 << 10


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    record: bool = True  # record the first container of an image on this node
    record_seconds: float = 10.0
    use: bool = True  # look up published profiles on lazy pulls and prefetch them
    lookup_timeout: float = 2.0  # seconds for the referrers lookup (and each fetch after)
    wait: float = 5.0  # seconds a container's Prepare waits for its profile's prefetch


@dataclass(eq=False)
class _Image:
    """What is known of one image manifest."""

    ref: Reference
    manifest: Digest
    layers: tuple[Digest, ...] | None  # None: not known without a request (not checked)
    looked_up: trio.Event | None = None  # set once the lookup is over; None: not started
    profile: Profile | None = None  # a published profile, structurally valid
    prefetched: dict[Digest, trio.Event] = field(default_factory=dict)
    recording: bool = False


class Profiles:
    """``snapfs.snapshot.remote.PrepareObserver`` over ``lazy``; tasks run in ``nursery``."""

    def __init__(self, lazy: LazyLayers, store: ProfileStore, source: ReferrerSource | None,
                 nursery: trio.Nursery, options: ProfileOptions | None = None) -> None:
        self._lazy = lazy
        self._store = store
        self._source = source
        self._nursery = nursery
        self.options = options or ProfileOptions()
        self._images: OrderedDict[Digest, _Image] = OrderedDict()
        self._tags: dict[str, tuple[float, Digest]] = {}
        self._locks: dict[str, trio.Lock] = {}
        if self.options.use and source is not None:
            lazy.hooks.preparing, lazy.hooks.view_made = self._preparing, self._view_made

    # -- the PrepareObserver seam, and the lazy Prepare's hooks ---------------------------------

    def _preparing(self, labels: Mapping[str, str]) -> None:
        """A lazy Prepare begins: the lookup runs beside its TOC fetch, not after it."""
        self._spawn(partial(self._use, dict(labels), prefetch=False))

    def _view_made(self, view: LazyLayerView, labels: Mapping[str, str]) -> None:
        """The layer's fetcher exists: the prefetch may start before the mount has it."""
        self._spawn(self._use, dict(labels), view)

    async def remote_prepared(self, lower: str, labels: Mapping[str, str]) -> None:
        if self.options.use and self._source is not None:
            self._spawn(self._use, dict(labels))

    async def before_active(self, key: str,
                            parents: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        try:
            await self._before_active(key, parents)
        except Exception:  # a bug here must not fail the container's Prepare
            log.exception("snapshot %s: startup profile handling failed; starting anyway", key)

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``fn`` aside; an unexpected error is logged, never taken down the daemon."""

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("startup profiles: %s failed", getattr(fn, "__name__", fn))

        self._nursery.start_soon(guarded)

    async def _before_active(self, key: str,
                             parents: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        lazy: list[tuple[str, Digest]] = []
        for lower, labels in parents:
            found = layer_source(labels)
            if found is not None and self._lazy.table.live(Path(lower).name) is not None:
                lazy.append((Path(lower).name, found[1]))
        if not lazy or self._source is None:
            return
        # Not a pull: no lookup starts here (a second run asks the registry nothing).
        image = await self._image_of(parents[-1][1], lookup=False)
        if image is None:
            return
        if image.looked_up is not None and self.options.wait > 0:
            events = [self._start_prefetch(image, digest) for _, digest in lazy]
            with trio.move_on_after(self.options.wait) as scope:
                for done in events:
                    await done.wait()
            if scope.cancelled_caught:
                log.info("snapshot %s: its profile's lookup or prefetch is not done after "
                         "%.1f s; starting anyway", key, self.options.wait)
        if self.options.record:
            await self._record(key, image, lazy)

    # -- using a published profile ------------------------------------------------------------

    async def _use(self, labels: dict[str, str], view: LazyLayerView | None = None, *,
                   prefetch: bool = True) -> None:
        """The image's profile lookup (once per manifest) and, with ``prefetch``, the
        layer's prefetch through ``view`` (else the mounted one) once the lookup is done."""
        found = layer_source(labels)
        if found is None:
            return
        image = await self._image_of(labels, lookup=True)
        if image is not None and prefetch:
            self._start_prefetch(image, found[1], view)

    async def _image_of(self, labels: Mapping[str, str], *, lookup: bool) -> _Image | None:
        """The image manifest a lazy layer's labels belong to — from the labels, or one
        manifest request (per pull) when they name only a tag — and with ``lookup`` its
        profile lookup started (once per manifest); None, logged, if it cannot be told."""
        found = layer_source(labels)
        if found is None or self._source is None:
            return None
        ref, layer = found
        key = labels.get(LABEL_MANIFEST_DIGEST) or ref.object
        lock = self._locks.setdefault(f"{ref.locator}@{key}", trio.Lock())
        async with lock:
            image = self._known(ref, key)
            if image is None and ":" in key:
                try:
                    manifest = parse_digest(key)
                except InvalidArgument as exc:
                    log.info("layer %s of %s: %s; no profile is used or recorded for it",
                             layer.short(), ref, exc)
                    return None
                image = self._remember(_Image(ref, manifest, listed_layers(labels)))
            elif image is None:
                image = await self._resolve(ref, key, layer)
                if image is None:
                    return None
            if lookup and image.looked_up is None:
                image.looked_up = trio.Event()
                if self.options.use:
                    self._spawn(self._look_up, image, image.looked_up)
                else:
                    image.looked_up.set()
            return image

    async def _resolve(self, ref: Reference, tag: str, layer: Digest) -> _Image | None:
        """The manifest ``tag`` names now (the one listing ``layer``, if it is an index)."""
        assert self._source is not None
        try:
            with trio.fail_after(self.options.lookup_timeout):
                desc, data = await self._source.fetch_manifest(ref, tag)
                if desc.media_type in INDEX_TYPES:
                    desc, data = await self._pick(ref, data, desc.media_type, layer)
            layers = tuple(d.digest for d in parse_manifest(data, desc.media_type).layers)
        except (ContentError, trio.TooSlowError) as exc:
            log.info("layer %s of %s: its image manifest cannot be read (%s); no profile "
                     "is used or recorded for it", layer.short(), ref, exc or "timeout")
            return None
        self._tags[f"{ref.locator}:{tag}"] = (time.monotonic(), desc.digest)
        known = self._images.get(desc.digest)
        return known if known is not None else self._remember(_Image(ref, desc.digest, layers))

    def _remember(self, image: _Image) -> _Image:
        self._images[image.manifest] = image
        while len(self._images) > _CACHED:
            self._images.popitem(last=False)
        return image

    def _known(self, ref: Reference, key: str) -> _Image | None:
        if ":" not in key:
            hit = self._tags.get(f"{ref.locator}:{key}")
            if hit is None or time.monotonic() - hit[0] > _TAG_TTL:
                return None
            return self._images.get(hit[1])
        try:
            return self._images.get(parse_digest(key))
        except InvalidArgument:
            return None

    async def _pick(self, ref: Reference, data: bytes, media_type: str,
                    layer: Digest) -> tuple[Descriptor, bytes]:
        """The manifest of an index that lists ``layer``."""
        assert self._source is not None
        for entry in parse_index(data, media_type).manifests:
            desc, raw = await self._source.fetch_manifest(ref, str(entry.digest))
            if desc.media_type not in INDEX_TYPES and any(
                    d.digest == layer for d in parse_manifest(raw, desc.media_type).layers):
                return desc, raw
        raise InvalidArgument(f"no manifest of index {ref} lists layer {layer.short()}")

    async def _look_up(self, image: _Image, done: trio.Event) -> None:
        """Find, fetch and check the manifest's published profile (once per manifest)."""
        assert self._source is not None
        what = f"profile of {image.ref.locator}@{image.manifest.short()}"
        try:
            with trio.fail_after(self.options.lookup_timeout):
                found = await self._source.referrers(image.ref, image.manifest,
                                                     ARTIFACT_TYPE)
            if not found:
                log.info("%s: none published", what)
                return
            with trio.fail_after(max(self.options.lookup_timeout, 5.0)):
                image.profile = await fetch_published(self._source, image.ref,
                                                      image.manifest, found[-1].desc,
                                                      image.layers)
            log.info("%s: found (artifact %s, %d file(s) in %d layer(s))", what,
                     found[-1].desc.digest.short(), len(image.profile.files),
                     len(image.profile.layers))
        except trio.TooSlowError:
            log.info("%s: the registry did not answer within %.1f s; none used", what,
                     self.options.lookup_timeout)
        except InvalidArgument as exc:
            log.warning("%s: ignored: %s", what, exc)
        except ContentError as exc:
            log.info("%s: cannot be looked up (%s); none used", what, exc)
        finally:
            done.set()

    def _start_prefetch(self, image: _Image, layer: Digest,
                        view: LazyLayerView | None = None) -> trio.Event:
        """Fetch the profile's files of ``layer`` (through ``view``, else the mounted one)
        once its lookup is done (once per layer and manifest); the event is set when that
        is over, whatever the outcome."""
        done = image.prefetched.get(layer)
        if done is None:
            done = image.prefetched[layer] = trio.Event()
            self._spawn(self._prefetch, image, layer, done, view)
        return done

    async def _prefetch(self, image: _Image, layer: Digest, done: trio.Event,
                        view: LazyLayerView | None) -> None:
        try:
            if image.looked_up is not None:
                await image.looked_up.wait()
                await self._prefetch_layer(image, layer, view)
        finally:
            done.set()

    async def _prefetch_layer(self, image: _Image, layer: Digest,
                              view: LazyLayerView | None) -> None:
        profile = image.profile
        ident = layer_id(layer)
        view = view or self._lazy.views().get(ident)
        if profile is None or view is None or self._lazy.is_local(ident):
            return
        paths = profile.paths_of(layer)
        missing = [p for p in paths if p not in view.layer.files]
        if missing:
            image.profile = None  # one warning: not used for any layer from now on
            log.warning("profile of %s@%s: ignored: layer %s holds no regular file %r (and %d "
                        "more of its %d)", image.ref.locator, image.manifest.short(),
                        layer.short(), missing[0], len(missing) - 1, len(paths))
            return
        try:
            await fetch_startup(view.fetcher, paths, bridge=BRIDGE)
        except (ContentError, OSError) as exc:
            log.warning("%s: prefetching its profile's %d file(s) failed: %s",
                        view.fetcher.what, len(paths), exc)

    # -- recording the first container ----------------------------------------------------------

    async def _record(self, key: str, image: _Image,
                      layers: Sequence[tuple[str, Digest]]) -> None:
        if image.recording:
            return
        image.recording = True  # one recording per manifest and process, even if it fails
        try:
            if await trio.to_thread.run_sync(self._store.exists, image.manifest):
                return
        except (OSError, InvalidArgument) as exc:
            log.warning("profile of %s: the local store cannot be read: %s", image.ref, exc)
            return
        lazy = [(i, d) for i, d in layers if not self._lazy.is_local(i)]
        if not lazy:
            log.info("snapshot %s: %s's layers are all local: nothing to record", key,
                     image.ref)
            return
        try:
            recording = await LocalRecording.start(self._lazy, [i for i, _ in lazy],
                                                   nursery=self._nursery)
        except ContentError as exc:
            log.warning("snapshot %s: cannot record a profile of %s: %s", key, image.ref, exc)
            return
        log.info("snapshot %s: recording the reads of %s's %d lazy layer(s) for %.0f s", key,
                 image.ref, len(lazy), self.options.record_seconds)
        self._spawn(self._finish, image, recording, lazy)

    async def _finish(self, image: _Image, recording: LocalRecording,
                      layers: Sequence[tuple[str, Digest]]) -> None:
        started = time.monotonic()
        try:
            await trio.sleep(self.options.record_seconds)
        finally:
            # At shutdown too: what the container read so far is worth keeping.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                try:
                    paths = await recording.stop()
                    views = self._lazy.views()
                    chain = [(d, views[i].layer.files) for i, d in layers if i in views]
                    files = attribute(paths, chain)
                    if files:
                        profile = make_profile(
                            image.manifest, files, image=str(image.ref),
                            seconds=round(time.monotonic() - started, 3),
                            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                        dest = await trio.to_thread.run_sync(self._store.write, profile)
                        log.info("profile of %s: %d file(s) of %d layer(s) recorded in %s",
                                 image.ref, len(files), len(profile.layers), dest)
                except (ContentError, OSError, KeyError) as exc:
                    log.warning("profile of %s: recording failed: %s", image.ref, exc)


def profile_options(config: Config) -> ProfileOptions:
    """The ``[profile]`` section of ``config`` (checked by snapfs.config as it was read)."""
    p = config.profile
    return ProfileOptions(record=p.record, record_seconds=p.record_seconds, use=p.use,
                          lookup_timeout=p.lookup_timeout, wait=p.wait)


@asynccontextmanager
async def open_profiles(lazy: LazyLayers, root: Path,
                        options: ProfileOptions | None = None) -> AsyncIterator[Profiles]:
    """The profiles of ``root``'s lazy layers; recordings in flight are stored on exit."""
    source = lazy.source if isinstance(lazy.source, ReferrerSource) else None
    async with trio.open_nursery() as nursery:
        profiles = Profiles(lazy, ProfileStore(root), source, nursery, options)
        try:
            yield profiles
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["ProfileOptions", "Profiles", "open_profiles", "profile_options"]
