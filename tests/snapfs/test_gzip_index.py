"""Unmodified gzip images pulled lazily through a side index pushed as a referrer (issue #15).

Real registry (Debian's docker-registry 2.8: no referrers API, so the tag-schema fallback),
real FUSE; the image is pushed as plain tar+gzip, never converted.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import zstandard

from content.digest import digest_bytes
from content.gzindex import ARTIFACT_TYPE, DEFAULT_SPAN, MAGIC, serialise
from content.gzlayer import parse_gzip_index
from content.image import Layer
from content.reference import parse_reference
from content.referrers import fallback_tag
from content.registry import open_registry
from content.tarlayer import Entry, build_tar
from snapfs.app.gzindex import artifact_manifest, index_image
from snapfs.lazy.layers import layer_id
from tests.fixtures.images import ImageFactory, to_layer
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs.test_lazy_pull import (
    T,
    bottom_entries,
    lazy_puller,
    native_tree,
    need_lazy,
    read_file,
    tree,
)

SPAN = 64 << 10


def extras(seed: str) -> list[Entry]:
    rnd = random.Random(seed)
    return [Entry(f"usr/share/blob{i}", data=rnd.randbytes(150_000), mtime=T) for i in range(6)]


def gzip_layer(seed: str) -> Layer:
    return to_layer(build_tar([*bottom_entries(seed), *extras(seed)]))  # plain gzip


async def push_indexed(image_factory: ImageFactory, registry: RegistryServer, repo: str,
                       seed: str, *, index: bool = True,
                       span: int = SPAN):  # type: ignore[no-untyped-def]
    layer = gzip_layer(seed)
    pushed = await image_factory.push(registry, repo, [layer])
    result = None
    if index:
        async with open_registry() as reg:
            result = await index_image(reg, pushed.ref, push=True, span=span, min_layer_size=0)
    return pushed, layer, result


async def test_indexed_gzip_image_mounts_lazily_and_equals_native(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    pushed, layer, result = await push_indexed(image_factory, registry, repo_name, repo_name)
    assert result is not None and result.artifact is not None
    (li,) = result.layers
    assert li.checkpoints > 10  # (random data: windows do not compress; size: unit tests)
    async with open_registry() as reg:  # no referrers API here: the fallback tag lists it
        found = await reg.referrers(pushed.ref, result.manifest, ARTIFACT_TYPE)
        assert [r.desc.digest for r in found] == [result.artifact]
        _, tagged = await reg.fetch_manifest(pushed.ref, fallback_tag(result.manifest))
        assert json.loads(tagged)["manifests"][0]["digest"] == str(result.artifact)
    root = tmp_path / "root"
    async with lazy_puller(root) as (puller, lazy, _sn):
        pulled = await puller.pull(pushed.ref)
        assert (pulled.lazy_layers, pulled.native_layers) == (1, 0)
        (status,) = lazy.layer_status()
        assert status.format == "gzip-index"
        lazy_dir = root / "fuse" / layer_id(layer.digest)
        stats = lazy.fetcher(layer.digest).stats
        assert stats.requests == 0
        assert await read_file(lazy_dir / "etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"
        # The span, and at most a locality window of neighbours: a fraction of the layer.
        assert stats.requests == 1 and stats.bytes_fetched < layer.size // 5
        expected = await native_tree(layer, tmp_path / "native")
        got = await trio.to_thread.run_sync(tree, lazy_dir)
        assert got == expected
        assert stats.verify_failures == 0
    # After a restart the layer comes back from its record (which keeps the index), offline.
    async with lazy_puller(root) as (_puller, lazy, _sn):
        (status,) = lazy.layer_status()
        assert (status.format, status.state) == ("gzip-index", "lazy")
        assert await read_file(lazy_dir / "usr/share/blob3") == extras(repo_name)[3].data
        # Completion streams the whole blob, checks layer digest and diffID, materialises.
        local = await lazy.make_local(str(layer.digest))
        assert await trio.to_thread.run_sync(tree, local) == expected


async def test_without_index_or_for_another_manifest_pulls_natively(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, caplog: pytest.LogCaptureFixture) -> None:
    need_lazy()
    caplog.set_level(logging.INFO)
    plain, _, _ = await push_indexed(image_factory, registry, repo_name, "a", index=False)
    # The same layer in an image with another config: its index names the other manifest.
    await push_indexed(image_factory, registry, repo_name + "-b", "b")
    other = await image_factory.push(registry, repo_name + "-b", [gzip_layer("b")],
                                     config={"architecture": "amd64", "os": "linux",
                                             "rootfs": {"type": "layers", "diff_ids": []},
                                             "config": {"Env": ["X=1"]}}, tag="other")
    async with lazy_puller(tmp_path / "root") as (puller, _lazy, _sn):
        for ref in (plain.ref, other.ref):
            pulled = await puller.pull(ref)
            assert (pulled.lazy_layers, pulled.native_layers) == (0, 1)
    lines = [r.getMessage() for r in caplog.records if "no gzip index" in r.getMessage()]
    assert len(lines) == 2, lines

async def test_a_small_file_read_fetches_less_than_its_span(
        tmp_path: Path, registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    """At the default span a read stops inflating past the file's part: the compressed bytes
    counted at a proxy are a fraction of the span, and a neighbour comes with them."""
    need_lazy()
    pushed, layer, result = await push_indexed(image_factory, registry, repo_name, repo_name,
                                               span=DEFAULT_SPAN)
    assert result is not None
    (li,) = result.layers
    index = parse_gzip_index(li.index, layer=layer.digest, blob_size=layer.size, what="t")
    first_span = index.span_range(0)[1]
    assert len(index.checkpoints) >= 3 and first_span >= DEFAULT_SPAN
    proxy = fault_proxy(registry.url)
    ref = parse_reference(f"{proxy.host}/{pushed.ref.repository}:{pushed.ref.tag}")
    blob_path = f"/v2/{pushed.ref.repository}/blobs/{layer.digest}"
    async with lazy_puller(tmp_path / "root") as (puller, lazy, _sn):
        await puller.pull(ref)
        proxy.sent.pop(blob_path, None)  # the footer probe of the Prepare
        lazy_dir = tmp_path / "root" / "fuse" / layer_id(layer.digest)
        stats = lazy.fetcher(layer.digest).stats
        before = stats.requests
        assert await read_file(lazy_dir / "etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"
        sent = proxy.sent.get(blob_path, 0)
        assert 0 < sent <= first_span // 2, (sent, first_span)
        assert stats.requests - before == 1 and stats.bytes_fetched <= sent
        # The next file came with it: verified against its own digest, cached, no request.
        assert await read_file(lazy_dir / "etc/caps") == b"caps\n"
        assert stats.requests - before == 1 and proxy.sent.get(blob_path, 0) == sent
        assert stats.verify_failures == 0


def _tamper(index: bytes, what: str) -> bytes:
    """Span 0's digest, or the part digest of /etc/passwd (a file in span 0)."""
    raw = zstandard.ZstdDecompressor().decompress(index)
    pos = len(MAGIC)
    h = int.from_bytes(raw[pos:pos + 4], "big")
    head = json.loads(raw[pos + 4:pos + 4 + h])
    pos += 4 + h
    t = int.from_bytes(raw[pos:pos + 4], "big")
    toc = json.loads(raw[pos + 4:pos + 4 + t])
    if what == "span digest":
        head["spanDigests"][0] = str(digest_bytes(b"not this span"))
    else:
        (e,) = [e for e in toc["entries"] if e["name"] == "etc/passwd"]
        e["chunkDigest"] = str(digest_bytes(b"not this span"))
    return serialise(head, toc, raw[pos + 4 + t:])


@pytest.mark.parametrize("what", ["span digest", "part digest"])
async def test_tampered_index_fails_affected_reads_with_eio(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, caplog: pytest.LogCaptureFixture, what: str) -> None:
    need_lazy()
    pushed, layer, _ = await push_indexed(image_factory, registry, repo_name, "t",
                                          index=False)
    async with open_registry() as reg:
        resolved = await reg.resolve(pushed.ref)
        clean = await index_image(reg, pushed.ref, push=False, span=SPAN, min_layer_size=0)
        (li,) = clean.layers
        bad = _tamper(li.index, what)
        tampered = type(li)(li.layer, li.layer_size, bad, li.checkpoints, li.files)
        await reg.push_blob(pushed.ref, b"{}")
        await reg.push_blob(pushed.ref, bad)
        await reg.push_referrer(pushed.ref, artifact_manifest(resolved, [tampered]),
                                ARTIFACT_TYPE)
    async with lazy_puller(tmp_path / "root") as (puller, lazy, _sn):
        pulled = await puller.pull(pushed.ref)
        assert pulled.lazy_layers == 1
        lazy_dir = tmp_path / "root" / "fuse" / layer_id(layer.digest)
        # A span digest is checked once the span is inflated whole: the read of the file
        # that ends span 0 (big.so's first part) does that; a part digest at its own read.
        victim = "usr/lib/big.so" if what == "span digest" else "etc/passwd"
        with pytest.raises(OSError) as err:
            await read_file(lazy_dir / victim)
        assert err.value.errno == errno.EIO
        logged = [r.getMessage() for r in caplog.records
                  if re.search(r"span 0\b", r.getMessage())]
        assert logged and layer.digest.short() in logged[0]
        assert str(digest_bytes(b"not this span")) in logged[0]
        # A file in a later span is unaffected.
        assert await read_file(lazy_dir / "usr/share/blob5") == extras("t")[5].data
        assert lazy.fetcher(layer.digest).stats.verify_failures >= 1
