"""The chain of trust of a lazy layer: the TOC is checked against what the manifest vouches for.

Real registry, real FUSE: images whose layer descriptors carry (or lack, or lie about) the TOC
digest, pulled through the in-process snapshotter as ``snapfs pull`` does.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from content.digest import digest_bytes
from content.errors import FailedPrecondition, InvalidArgument
from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import ANN_STARGZ_TOC_DIGEST, OCI_LAYER_GZIP
from content.registry import open_registry
from content.store import ContentStore
from content.tarlayer import Entry, build_tar
from snapfs.app.images import ImageStore
from snapfs.app.pull import Puller
from snapfs.lazy.layers import LazyLayers, layer_id
from snapfs.lazy.open import open_lazy_layers
from snapfs.lazy.schedule import FetchOptions
from snapfs.lazy.trust import TocPolicy
from snapfs.snapshot.labels import LABEL_SNAPSHOT_REF
from snapfs.snapshot.snapshotter import open_snapshotter
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_lazy_pull import need_lazy

CHUNK = 4096


def estargz(entries: list[Entry]) -> tuple[Layer, str]:
    built = build_estargz(io.BytesIO(build_tar(entries)), chunk_size=CHUNK)
    assert built.blob is not None
    return (Layer(built.blob, OCI_LAYER_GZIP, built.diff_id, dict(built.annotations)),
            str(built.toc_digest))


def entries(text: bytes) -> list[Entry]:
    return [Entry("etc", "dir"), Entry("etc/motd", data=text),
            Entry("usr/lib/data.bin", data=text * 5000)]


def only(exc: BaseException) -> BaseException:
    """The one error inside nested single-exception groups (the puller's nursery)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def puller(root: Path, toc: TocPolicy = "require") -> AsyncIterator[
        tuple[Puller, LazyLayers]]:
    async with (
        open_registry() as registry,
        open_lazy_layers(root, registry, options=FetchOptions(background=False), toc=toc)
        as lazy,
        open_snapshotter(root, remote=lazy) as sn,
    ):
        with ContentStore(root / "content") as store:
            images = ImageStore(root)
            try:
                yield Puller(registry, store, sn, images), lazy
            finally:
                images.close()


async def test_a_tampered_toc_is_refused_naming_both_digests(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    _, genuine_toc = estargz(entries(b"genuine\n"))
    # Self-consistent (its chunks match its own TOC), but not the TOC its manifest vouches for.
    forged, forged_toc = estargz(entries(b"forged!\n"))
    forged = Layer(forged.blob, forged.media_type, forged.diff_id,
                   {**forged.annotations, ANN_STARGZ_TOC_DIGEST: genuine_toc})
    pushed = await image_factory.push(registry, repo_name, [forged])
    async with puller(tmp_path / "root") as (p, lazy):
        with pytest.raises(BaseException) as caught:
            await p.pull(pushed.ref)
        error = only(caught.value)
        assert isinstance(error, InvalidArgument)
        assert genuine_toc in str(error) and forged_toc in str(error)
        assert lazy.layer_status() == [] and lazy.db.all() == []
        assert lazy.fs.layer_ids() == []  # nothing of it was ever served


async def test_the_manifest_vouches_when_no_label_does(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    # ctr-remote and CRI pass the TOC digest as a label; without it, the manifest (fetched by
    # the digest in cri.manifest-digest) is where the digest comes from.
    need_lazy()
    genuine, genuine_toc = estargz(entries(b"genuine\n"))
    forged, forged_toc = estargz(entries(b"forged!\n"))
    forged = Layer(forged.blob, forged.media_type, forged.diff_id,
                   {**forged.annotations, ANN_STARGZ_TOC_DIGEST: genuine_toc})
    good = await image_factory.push(registry, repo_name, [genuine], tag="good")
    bad = await image_factory.push(registry, repo_name, [forged], tag="bad")
    async with puller(tmp_path / "root") as (_, lazy):
        for pushed, layer in ((good, genuine), (bad, forged)):
            labels = {LABEL_SNAPSHOT_REF: "sha256:" + "1" * 64,
                      "containerd.io/snapshot/cri.image-ref": str(pushed.ref),
                      "containerd.io/snapshot/cri.layer-digest": str(layer.digest)}
            if pushed is good:
                offered = await lazy.prepare_remote("k", "", labels)
                assert offered is not None
                assert offered.lower.endswith(layer_id(layer.digest))
            else:
                with pytest.raises(InvalidArgument, match=forged_toc):
                    await lazy.prepare_remote("k2", "", labels)


@pytest.mark.parametrize(("policy", "lazily"), [("require", False), ("warn", True)])
async def test_a_layer_without_a_declared_toc_digest_follows_the_policy(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, policy: TocPolicy, lazily: bool) -> None:
    need_lazy()
    layer, _ = estargz(entries(b"undeclared\n"))
    bare = Layer(layer.blob, layer.media_type, layer.diff_id,
                 {k: v for k, v in layer.annotations.items() if k != ANN_STARGZ_TOC_DIGEST})
    pushed = await image_factory.push(registry, repo_name, [bare])
    async with puller(tmp_path / "root", policy) as (p, lazy):
        result = await p.pull(pushed.ref)
        assert (result.lazy_layers, result.native_layers) == ((1, 0) if lazily else (0, 1))
        assert (lazy.fs.layer_ids() == [layer_id(bare.digest)]) is lazily
    assert digest_bytes(bare.blob) == bare.digest


async def test_a_poisoned_chain_is_never_reused_for_the_genuine_layer(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    # The attacker's image claims the genuine layer's diffID (so the same chain ID) for other
    # bytes. Pulled first, it becomes a lazy snapshot under that chain ID; the genuine image
    # must never be served from it.
    need_lazy()
    genuine, _ = estargz(entries(b"genuine\n"))
    forged, _ = estargz(entries(b"forged!\n"))
    poison = Layer(forged.blob, forged.media_type, genuine.diff_id, forged.annotations)
    bad = await image_factory.push(registry, repo_name, [poison], tag="poison")
    good = await image_factory.push(registry, repo_name, [genuine], tag="genuine")
    async with (
        open_registry() as reg,
        open_lazy_layers(tmp_path / "root", reg, options=FetchOptions()) as lazy,
        open_snapshotter(tmp_path / "root", remote=lazy) as sn,
    ):
        with ContentStore(tmp_path / "root" / "content") as store:
            images = ImageStore(tmp_path / "root")
            try:
                p = Puller(reg, store, sn, images)
                first = await p.pull(bad.ref)
                assert first.lazy_layers == 1
                with pytest.raises(BaseException) as caught:
                    await p.pull(good.ref)
                error = only(caught.value)
                # Its background completion found the lie: the chain is not reused.
                assert isinstance(error, FailedPrecondition), error
                assert "failed verification" in str(error)
                assert str(genuine.digest) in str(error)
                (row,) = lazy.table.live_rows()
                assert row.state == "broken"
            finally:
                images.close()
