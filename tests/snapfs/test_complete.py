"""Completing lazy layers by default: the whole blob in the background, verified (blob
digest and diffID), materialised; reads never wait behind it; a lying layer is taken out of
service. Real registry, FUSE and overlayfs; the scheduler's order with an in-memory source.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from content.digest import Digest, digest_bytes
from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import OCI_LAYER_GZIP
from content.reference import parse_reference
from content.tarlayer import Entry, build_tar
from snapfs.lazy.layers import layer_id
from snapfs.lazy.schedule import FetchOptions
from snapfs.lazy.scheduler import FetchScheduler
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_hotpath import active_mount, overlay_lowers, served
from tests.snapfs.test_lazy_pull import big_so, lazy_puller, need_lazy, push_image, tree

REF = parse_reference("127.0.0.1:1/x/y:1")


async def test_with_defaults_a_lazy_layer_becomes_local_by_itself(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    ids = [layer_id(x.digest) for x in layers]
    async with lazy_puller(tmp_path / "root", FetchOptions()) as (p, lazy, sn):
        result = await p.pull(pushed.ref)
        top = str(result.record.chain_ids[-1])
        async with active_mount(sn, "c1", top, tmp_path / "c1") as first:
            assert all("/fuse/" in x for x in overlay_lowers(first))
            expected = await trio.to_thread.run_sync(tree, first)
            # No further read: the background fetch completes the layers on its own.
            with trio.fail_after(120):
                while not all(s.state == "local" for s in lazy.layer_status()):
                    await trio.sleep(0.05)
            assert await trio.to_thread.run_sync(tree, first) == expected  # via FUSE, now local
            for status in lazy.layer_status():
                assert status.stats.background_bytes > 0
        requests = {i: served(lazy, i) for i in ids}
        async with active_mount(sn, "c2", top, tmp_path / "c2") as second:
            assert not any("/fuse/" in x for x in overlay_lowers(second))
            assert (second / "usr/lib/big.so").read_bytes() == big_so(repo_name)
            assert await trio.to_thread.run_sync(tree, second) == expected
        assert {i: served(lazy, i) for i in ids} == requests  # the second one never used FUSE
        # Not stored twice: the chunks of materialised layers left the cache.
        for layer in lazy.views().values():
            assert not any(lazy.cache.has(c.digest) for cs in layer.layer.files.values()
                           for c in cs)


async def test_a_layer_whose_diff_id_lies_is_taken_out_of_service(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    # The poisoning shape: a config claiming another layer's diffID for different bytes.
    need_lazy()
    entries = [Entry("etc", "dir"), Entry("etc/motd", data=b"attacker\n")]
    built = build_estargz(io.BytesIO(build_tar(entries)), chunk_size=4096)
    assert built.blob is not None
    claimed = digest_bytes(b"the genuine layer's uncompressed stream")
    liar = Layer(built.blob, OCI_LAYER_GZIP, claimed, dict(built.annotations))
    pushed = await image_factory.push(registry, repo_name, [liar])
    async with lazy_puller(tmp_path / "root", FetchOptions()) as (p, lazy, sn):
        result = await p.pull(pushed.ref)
        assert result.lazy_layers == 1
        with trio.fail_after(60):
            while lazy.layer_status()[0].state != "broken":
                await trio.sleep(0.05)
        (status,) = lazy.layer_status()
        assert status.state == "broken"
        (row,) = lazy.table.live_rows()
        assert row.broken is not None
        assert str(claimed) in row.broken and str(built.diff_id) in row.broken
        assert not (tmp_path / "root" / "layers" / layer_id(liar.digest)).exists()
        async with active_mount(sn, "c1", str(result.record.chain_ids[-1]),
                                tmp_path / "c1") as rootfs:
            with pytest.raises(OSError):  # nothing unverified is served
                # From a thread: this loop serves the FUSE mount it reads.
                await trio.to_thread.run_sync((rootfs / "etc/motd").read_bytes)


class Recording:
    """An in-memory blob source that records the order requests reach it."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.log: list[str] = []

    async def fetch_range(self, ref: object, digest: Digest, offset: int,
                          length: int) -> bytes:
        self.log.append("demand" if length == 7 else "background")
        await trio.sleep(0.01)  # the link
        return self.blob[offset:offset + length]


async def test_a_read_goes_out_before_background_pieces_queued_after_it(
        autojump_clock: trio.abc.Clock) -> None:
    source = Recording(bytes(64 << 20))
    sched = FetchScheduler(source, background_concurrency=2)
    digest = digest_bytes(b"blob")
    demand_issued = trio.Event()

    async def background() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(sched.fetch, REF, digest, i << 20, 1 << 20, "background")
                await trio.sleep(0.001)  # pieces keep being queued while the read happens

    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        await trio.sleep(0.0155)  # background is flowing
        queued_before = len(source.log)
        await sched.fetch(REF, digest, 0, 7, "demand", on_issue=demand_issued.set)
        assert demand_issued.is_set()
    at = source.log.index("demand")
    # Only pieces already on the wire (at most background_concurrency) went out between the
    # read's call and its request; none queued after it did.
    assert at - queued_before <= 2
    assert source.log.count("background") == 40
    assert sched.stats.by_class["demand"].requests == 1
